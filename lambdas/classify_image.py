"""Lambda 2 of the inference workflow: send the image to the SageMaker endpoint.

Fills `inferences` with the class probabilities the endpoint returns, in class order.
Throttling and not-ready models become EndpointThrottled (the ASL retries those);
other endpoint errors become EndpointError with the status code.
"""
from __future__ import annotations

import json

from botocore.exceptions import BotoCoreError, ClientError

from lambdas import events, settings
from lambdas.clients import aws_client
from lambdas.errors import EndpointError, EndpointThrottled, ImageTooLarge

_THROTTLED_CODES = {"ThrottlingException", "Throttling", "TooManyRequestsException",
                    "ModelNotReadyException", "ServiceUnavailable"}


def classify(event: dict, runtime_client, endpoint_name: str,
             class_names: tuple[str, ...] | None = None) -> dict:
    """The event with inferences from InvokeEndpoint (plain, unwrapped).

    class_names, when given, checks the endpoint returned one score per class.
    """
    event = events.parse_event(event, need_image=True)
    where = events.s3_url(event)
    image = events.decode_image_data(event["image_data"], where)
    content_type = events.image_content_type(image, where)
    if len(image) > events.MAX_INVOKE_ENDPOINT_BODY_BYTES:
        raise ImageTooLarge(f"{where} is {len(image)} bytes, over InvokeEndpoint's "
                            f"{events.MAX_INVOKE_ENDPOINT_BODY_BYTES}-byte body limit")
    try:
        response = runtime_client.invoke_endpoint(
            EndpointName=endpoint_name, ContentType=content_type,
            Accept="application/json", Body=image)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        original = exc.response.get("OriginalStatusCode")
        detail = (f"endpoint {endpoint_name!r} answered {code or 'an error'}"
                  f" (HTTP {status}{f', model status {original}' if original else ''}) "
                  f"for {where}: {error.get('Message', exc)}")
        if code in _THROTTLED_CODES or status == 429:
            raise EndpointThrottled(detail) from None
        raise EndpointError(detail) from None
    except BotoCoreError as exc:  # connection refused, timeouts: nothing came back
        raise EndpointError(f"endpoint {endpoint_name!r} could not be reached for "
                            f"{where}: {exc}") from None
    raw = response["Body"].read()
    try:
        scores = json.loads(raw)
    except ValueError:
        raise EndpointError(f"endpoint {endpoint_name!r} returned a body that is not JSON "
                            f"for {where}: {raw[:200]!r}") from None
    if (not isinstance(scores, list) or not scores
            or not all(events.is_number(s) for s in scores)):
        raise EndpointError(f"endpoint {endpoint_name!r} returned {scores!r} for {where}; "
                            f"expected a JSON list of class probabilities")
    if class_names is not None and len(scores) != len(class_names):
        raise EndpointError(f"endpoint {endpoint_name!r} returned {len(scores)} scores for "
                            f"{where} but {len(class_names)} classes are configured "
                            f"({','.join(class_names)})")
    return {**event, "inferences": [float(s) for s in scores]}


def lambda_handler(event, context):
    return classify(event, aws_client("sagemaker-runtime"), settings.endpoint_name(),
                    settings.class_names())
