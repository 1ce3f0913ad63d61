"""Lambda 2 of the inference workflow: send the image to the SageMaker endpoint.

The image is the event's image_data (base64) or, for an image too large for the state,
the S3 object its image_ref names (read here with GetObject, If-Match the ETag serialize
saw; see lambdas/events.py). Fills `inferences` with the class probabilities the
endpoint returns, in class order, and `ood_score` / `ood_threshold` with the picture's
out-of-distribution score and its model version's threshold (the endpoint's verbose answer,
Accept: application/json; verbose=true; null from a model without them). Throttling and not-ready models become
EndpointThrottled (the ASL retries those); other endpoint errors become EndpointError
with the status code. Images over 6 MB are ImageTooLarge.

The endpoint is ENDPOINT_NAME (prod), or the one the execution input names in
`endpoint_name` if ALLOWED_ENDPOINT_NAMES lists it (the staging test sends staging's).

IAM: sagemaker:InvokeEndpoint on those endpoints, and s3:GetObject on the images (for
images passed by reference; s3:ListBucket too, to tell a missing image from a refused read).
"""
from __future__ import annotations

import json

from botocore.exceptions import BotoCoreError, ClientError

from lambdas import events, settings
from lambdas.clients import aws_client, get_image_object
from lambdas.errors import EndpointError, EndpointThrottled, ImageTooLarge

# Ask for the verbose answer: {"probabilities", "ood_score", "ood_threshold"}.
VERBOSE_ACCEPT = "application/json; verbose=true"
_THROTTLED_CODES = {"ThrottlingException", "Throttling", "TooManyRequestsException",
                    "ModelNotReadyException", "ServiceUnavailable"}


def read_referenced_image(image_ref: dict, s3_client, where: str) -> bytes:
    """The bytes of the S3 object image_ref names, at most 6 MB."""
    response = get_image_object(s3_client, image_ref["s3_bucket"], image_ref["s3_key"],
                                if_match=image_ref.get("etag"))
    body = response["Body"]
    try:
        length = response.get("ContentLength")
        if length is not None:
            events.check_invoke_endpoint_size(length, where)
        image = body.read(events.MAX_INVOKE_ENDPOINT_BODY_BYTES + 1)
    finally:
        body.close()
    events.check_invoke_endpoint_size(len(image), where)
    return image


def invoke_endpoint(runtime_client, endpoint_name: str, content_type: str, body: bytes,
                    what: str, accept: str = "application/json") -> bytes:
    """InvokeEndpoint's answer body; EndpointThrottled (retried by the state machine) or
    EndpointError naming the endpoint, `what` was sent and what came back otherwise."""
    try:
        response = runtime_client.invoke_endpoint(
            EndpointName=endpoint_name, ContentType=content_type,
            Accept=accept, Body=body)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        original = exc.response.get("OriginalStatusCode")
        detail = (f"endpoint {endpoint_name!r} answered {code or 'an error'}"
                  f" (HTTP {status}{f', model status {original}' if original else ''}) "
                  f"for {what}: {error.get('Message', exc)}")
        if code in _THROTTLED_CODES or status == 429:
            raise EndpointThrottled(detail) from None
        raise EndpointError(detail) from None
    except BotoCoreError as exc:  # connection refused, timeouts: nothing came back
        raise EndpointError(f"endpoint {endpoint_name!r} could not be reached for "
                            f"{what}: {exc}") from None
    return response["Body"].read()


def classify(event: dict, runtime_client, endpoint_name: str,
             class_names: tuple[str, ...] | None = None, s3_client=None) -> dict:
    """The event with inferences from InvokeEndpoint (plain, unwrapped).

    class_names, when given, checks the endpoint returned one score per class.
    s3_client reads an image passed by reference; None: the function's own, made only
    when needed.
    """
    event = events.parse_event(event, need_image=True)
    where = events.s3_url(event)
    if event["image_data"]:
        image = events.decode_image_data(event["image_data"], where)
    else:
        image_ref = event["image_ref"]
        where = f"s3://{image_ref['s3_bucket']}/{image_ref['s3_key']}"
        image = read_referenced_image(image_ref, s3_client or aws_client("s3"), where)
    if len(image) > events.MAX_INVOKE_ENDPOINT_BODY_BYTES:
        raise ImageTooLarge(f"{where} is {len(image)} bytes, over InvokeEndpoint's "
                            f"{events.MAX_INVOKE_ENDPOINT_BODY_BYTES}-byte body limit")
    content_type = events.image_content_type(image, where)
    raw = invoke_endpoint(runtime_client, endpoint_name, content_type, image, where,
                          accept=VERBOSE_ACCEPT)
    try:
        scores = json.loads(raw)
    except ValueError:
        raise EndpointError(f"endpoint {endpoint_name!r} returned a body that is not JSON "
                            f"for {where} ({len(raw)} bytes)") from None
    ood = {"ood_score": None, "ood_threshold": None}
    if isinstance(scores, dict):  # the verbose answer
        ood = {key: scores.get(key) if events.is_number(scores.get(key)) else None
               for key in ood}
        scores = scores.get("probabilities")
    if (not isinstance(scores, list) or not scores
            or not all(events.is_number(s) for s in scores)):
        raise EndpointError(f"endpoint {endpoint_name!r} returned {scores!r} for {where}; "
                            f"expected a JSON list of class probabilities")
    if class_names is not None and len(scores) != len(class_names):
        raise EndpointError(f"endpoint {endpoint_name!r} returned {len(scores)} scores for "
                            f"{where} but {len(class_names)} classes are configured "
                            f"({','.join(class_names)})")
    return {**event, "inferences": [float(s) for s in scores], **ood}


def lambda_handler(event, context):
    requested = events.unwrap(event).get(settings.EVENT_ENDPOINT_KEY)
    return classify(event, aws_client("sagemaker-runtime"), settings.endpoint_for(requested),
                    settings.class_names())
