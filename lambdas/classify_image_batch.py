"""Bulk inference, step 2: serialize -> classify -> filter for one batch of images.

The same chain as the per-image workflow, with the same rules and error names, run over a
batch inside one invocation so that the per-execution and per-invocation costs are paid
once per batch instead of once per image:
  serialize: each image read from S3 (ImageNotFound, ImageNotReadable, InvalidImage:
             empty, not PNG/JPEG, truncated PNG; ImageTooLarge over InvokeEndpoint's 6 MB);
  classify:  the readable images sent to the endpoint in ONE request per 6 MB
             (BATCH_CONTENT_TYPE, below); an image the model cannot decode is an
             EndpointError for that image only;
  filter:    lambdas.filter_inferences.filter_inference on each image's inferences and
             out-of-distribution score (NotAVehicle over the version's OOD threshold,
             ThresholdConfidenceNotMet below the confidence threshold).
A failure of one image is that image's result; only a failure of the whole batch (the
endpoint unreachable, throttling after the state's retries, an invalid item) fails the
invocation, and so the child execution, which the Map's tolerated-failure threshold counts.

Each image's result is one JSON line in the batch's results object, s3://results.bucket/
results.key (lines in the batch's key order); the invocation returns only counts, so the
state stays small whatever the batch size.

The endpoint is ENDPOINT_NAME (prod), or the batch's "endpoint_name" if
ALLOWED_ENDPOINT_NAMES lists it (lambdas.settings.endpoint_for).

With a "failure" {"Error", "Cause"} in the event (the child's Catch), it records that
failure for every image of the batch instead, and returns it for the child's Fail state.

Batch request (BATCH_CONTENT_TYPE): {"images": [<base64 image>, ...]}; answer (JSON):
{"predictions": [[p0, p1, ...] | {"error": <message>, "status": <HTTP status>}, ...]},
one entry per image, in order.
"""
from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import ClientError

from lambdas import events, settings
from lambdas.classify_image import VERBOSE_ACCEPT, invoke_endpoint
from lambdas.clients import aws_client
from lambdas.errors import (EndpointError, ImageNotFound, ImageNotReadable, ImageTooLarge,
                            InvalidEvent, NotAVehicle, ThresholdConfidenceNotMet,
                            WorkflowLambdaError)
from lambdas.filter_inferences import filter_inference

BATCH_CONTENT_TYPE = "application/x-scones-image-batch+json"
# One request's body stays under InvokeEndpoint's 6 MB with room for the JSON around it.
MAX_REQUEST_BYTES = events.MAX_INVOKE_ENDPOINT_BODY_BYTES - 64 * 1024
READ_THREADS = 16   # S3 GETs of one batch in parallel (network-bound on AWS)
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}


def check_batch(event) -> dict:
    if not isinstance(event, dict):
        raise InvalidEvent(f"a batch must be a JSON object, got {type(event).__name__}")
    keys, bucket, results = event.get("keys"), event.get("bucket"), event.get("results")
    if not isinstance(bucket, str) or not bucket:
        raise InvalidEvent(f"the batch's bucket must be a non-empty string, got {bucket!r}")
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise InvalidEvent(f"the batch's keys must be a list of non-empty strings, got "
                           f"{str(keys)[:200]}")
    if (not isinstance(results, dict) or not isinstance(results.get("bucket"), str)
            or not isinstance(results.get("key"), str)):
        raise InvalidEvent(f"the batch has no results location {{bucket, key}}: {results!r}")
    return event


def _failed(image: str, error: str, cause: str, inferences=None, label=None,
            meets_threshold=None) -> dict:
    return {"Image": image, "Status": "FAILED", "PredictedLabel": label,
            "Inferences": inferences, "MeetsThreshold": meets_threshold, "Error": error,
            "Cause": cause}


def read_image(s3_client, bucket: str, key: str) -> bytes:
    """serialize_image_data's read, without the base64 (the bytes never enter a state)."""
    where = f"s3://{bucket}/{key}"
    try:
        response = s3_client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND_CODES:
            what = "bucket" if code == "NoSuchBucket" else "object"
            raise ImageNotFound(f"{where}: no such {what} ({code})") from None
        raise ImageNotReadable(f"{where}: S3 refused the read ({code or 'unknown error'}: "
                               f"{exc.response.get('Error', {}).get('Message', exc)})") from None
    body = response["Body"]
    length = response.get("ContentLength")
    if length is not None and length > events.MAX_INVOKE_ENDPOINT_BODY_BYTES:
        body.close()
        raise ImageTooLarge(f"{where} is {length} bytes, over InvokeEndpoint's "
                            f"{events.MAX_INVOKE_ENDPOINT_BODY_BYTES}-byte body limit")
    data = body.read()
    events.image_content_type(data, where)
    return data


def _requests(images: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
    """The readable images split into requests of at most MAX_REQUEST_BYTES (base64)."""
    groups: list[list[tuple[int, bytes]]] = [[]]
    size = 0
    for index, data in images:
        encoded = (len(data) + 2) // 3 * 4 + 3
        if groups[-1] and size + encoded > MAX_REQUEST_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((index, data))
        size += encoded
    return [g for g in groups if g]


def invoke_batch(runtime_client, endpoint_name: str, images: list[bytes], where: str) -> list:
    """One InvokeEndpoint call for several images: their predictions, in order."""
    body = json.dumps({"images": [base64.b64encode(d).decode("ascii") for d in images]},
                      separators=(",", ":")).encode("ascii")
    raw = invoke_endpoint(runtime_client, endpoint_name, BATCH_CONTENT_TYPE, body,
                          f"a batch of {len(images)} images of {where}", accept=VERBOSE_ACCEPT)
    try:
        predictions = json.loads(raw)["predictions"]
    except (ValueError, KeyError, TypeError):
        # The answer's bytes are not echoed: say how much came back instead.
        raise EndpointError(f"endpoint {endpoint_name!r} answered a batch with {len(raw)} "
                            f"bytes; expected {{\"predictions\": [...]}} "
                            f"({BATCH_CONTENT_TYPE})") from None
    if not isinstance(predictions, list) or len(predictions) != len(images):
        count = len(predictions) if isinstance(predictions, list) else "no list of"
        raise EndpointError(f"endpoint {endpoint_name!r} answered {count} predictions for "
                            f"{len(images)} images")
    return predictions


def classify_batch(event, s3_client, runtime_client, endpoint_name: str,
                   threshold: float, class_names: tuple[str, ...]) -> list[dict]:
    """One result line per key of the batch, in key order."""
    batch = check_batch(event)
    bucket, keys = batch["bucket"], batch["keys"]
    urls = [f"s3://{bucket}/{key}" for key in keys]
    lines: list[dict | None] = [None] * len(keys)

    def read(index: int):
        try:
            return index, read_image(s3_client, bucket, keys[index])
        except WorkflowLambdaError as exc:
            lines[index] = _failed(urls[index], type(exc).__name__, str(exc))
            return index, None

    with ThreadPoolExecutor(min(READ_THREADS, max(1, len(keys)))) as pool:
        readable = [(i, data) for i, data in pool.map(read, range(len(keys)))
                    if data is not None]
    where = f"s3://{bucket}/{keys[0]}..." if keys else f"s3://{bucket}/"
    for group in _requests(readable):
        predictions = invoke_batch(runtime_client, endpoint_name, [d for _, d in group], where)
        for (index, _), prediction in zip(group, predictions):
            lines[index] = _line(urls[index], bucket, keys[index], prediction, endpoint_name,
                                 threshold, class_names)
    return lines  # type: ignore[return-value]


def _line(url: str, bucket: str, key: str, prediction, endpoint_name: str, threshold: float,
          class_names: tuple[str, ...]) -> dict:
    ood = {}
    if isinstance(prediction, dict) and "probabilities" in prediction:  # the verbose answer
        ood = {key: prediction.get(key) for key in ("ood_score", "ood_threshold")}
        prediction = prediction["probabilities"]
    if isinstance(prediction, dict):  # the model refused this image (e.g. a cut JPEG)
        return _failed(url, EndpointError.__name__,
                       f"endpoint {endpoint_name!r} answered {prediction.get('status')} for "
                       f"{url}: {prediction.get('error')}")
    if (not isinstance(prediction, list) or len(prediction) != len(class_names)
            or not all(events.is_number(p) for p in prediction)):
        return _failed(url, EndpointError.__name__,
                       f"endpoint {endpoint_name!r} returned {str(prediction)[:100]} for {url}; "
                       f"expected {len(class_names)} class probabilities")
    inferences = [float(p) for p in prediction]
    try:
        passed = filter_inference({"s3_bucket": bucket, "s3_key": key, "image_data": "",
                                   "inferences": inferences, **ood}, threshold, class_names)
    except NotAVehicle as exc:  # a verdict of the filter, like the threshold's
        return _failed(url, type(exc).__name__, str(exc), inferences, meets_threshold=False)
    except ThresholdConfidenceNotMet as exc:
        return _failed(url, type(exc).__name__, str(exc), inferences, exc.predicted_label,
                       meets_threshold=False)
    except WorkflowLambdaError as exc:
        return _failed(url, type(exc).__name__, str(exc), inferences)
    return {"Image": url, "Status": "SUCCEEDED", "PredictedLabel": passed["predicted_label"],
            "Inferences": inferences, "MeetsThreshold": True, "Error": None, "Cause": None}


def write_lines(s3_client, batch: dict, lines: list[dict]) -> None:
    body = "".join(json.dumps({**line, "Batch": batch.get("batch")}, separators=(",", ":"))
                   + "\n" for line in lines)
    s3_client.put_object(Bucket=batch["results"]["bucket"], Key=batch["results"]["key"],
                         Body=body.encode("utf-8"), ContentType="application/x-ndjson")


def counts(lines: list[dict]) -> dict:
    return {"images": len(lines),
            "succeeded": sum(line["Status"] == "SUCCEEDED" for line in lines),
            "below_threshold": sum(line["MeetsThreshold"] is False for line in lines),
            "failed": sum(line["Status"] != "SUCCEEDED" and line["MeetsThreshold"] is not False
                          for line in lines)}


def readable_cause(cause) -> str:
    """A Lambda error's Cause is its JSON error report; people want the message."""
    try:
        report = json.loads(cause)
    except (TypeError, ValueError):
        return str(cause)
    if isinstance(report, dict) and isinstance(report.get("errorMessage"), str):
        return report["errorMessage"]
    return str(cause)


# What a Step Functions error (States.Timeout, States.TaskFailed...) is reported as by the
# child's Fail state: names starting "States." are reserved, as in the inference workflow
# (workflow.definition.WORKFLOW_ERROR); the original name leads the Cause.
WORKFLOW_ERROR = "WorkflowError"


def record_failure(event, s3_client) -> dict:
    """Every image of the batch failed with the batch's error; returns {Error, Cause} for
    the child's Fail state (never a reserved States.* name)."""
    failure = event.get("failure") if isinstance(event, dict) else None
    if not isinstance(failure, dict):
        raise InvalidEvent("a failure record needs 'failure': {Error, Cause}")
    error = str(failure.get("Error") or "BatchFailed")
    cause = str(failure.get("Cause") or "")
    batch = check_batch(event)
    lines = [{**_failed(f"s3://{batch['bucket']}/{key}", error, readable_cause(cause)),
              "BatchFailed": True} for key in batch["keys"]]
    write_lines(s3_client, batch, lines)
    if error.startswith("States."):
        return {"Error": WORKFLOW_ERROR, "Cause": f"{error}: {readable_cause(cause)}"}
    return {"Error": error, "Cause": cause}


def lambda_handler(event, context):
    s3 = aws_client("s3")
    if isinstance(event, dict) and "failure" in event:
        return record_failure(event, s3)
    requested = event.get(settings.EVENT_ENDPOINT_KEY) if isinstance(event, dict) else None
    lines = classify_batch(event, s3, aws_client("sagemaker-runtime"),
                           settings.endpoint_for(requested), settings.confidence_threshold(),
                           settings.class_names())
    write_lines(s3, event, lines)
    return {"batch": event.get("batch"), **counts(lines)}
