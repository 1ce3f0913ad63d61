"""Bulk inference, step 1: plan the batches a Distributed Map runs.

Lists every object under s3://bucket/prefix and writes the batches as one JSON array (the
manifest the Map's ItemReader reads): each item names its batch number, its images' keys
and where that batch writes its results, so a child execution needs nothing but its item.

Input: {"bucket", "prefix", "batch_size", "tolerated_failure_percentage",
        "results": {"bucket", "prefix"}, optional "endpoint_name" (copied into each batch)}
Output: the input plus {"images", "batches", "manifest": {"bucket", "key"}}.
"""
from __future__ import annotations

import json
import math

from botocore.exceptions import ClientError

from lambdas import settings
from lambdas.clients import aws_client
from lambdas.errors import ImageNotFound, ImageNotReadable, InvalidEvent

MAX_BATCH_SIZE = 1000
MANIFEST_NAME = "batches.json"


def _text(event: dict, key: str) -> str:
    value = event.get(key)
    if not isinstance(value, str):
        raise InvalidEvent(f"the bulk run's {key!r} must be a string, got {value!r}")
    return value


def check_run(event) -> dict:
    """The run's parameters, validated; InvalidEvent names what is wrong."""
    if not isinstance(event, dict):
        raise InvalidEvent(f"the bulk run's input must be a JSON object, got "
                           f"{type(event).__name__}")
    bucket, prefix = _text(event, "bucket"), _text(event, "prefix")
    if not bucket:
        raise InvalidEvent("the bulk run's 'bucket' is empty")
    size = event.get("batch_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BATCH_SIZE:
        raise InvalidEvent(f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE}, "
                           f"got {size!r}")
    tolerated = event.get("tolerated_failure_percentage")
    if (not isinstance(tolerated, (int, float)) or isinstance(tolerated, bool)
            or not 0 <= tolerated <= 100):
        raise InvalidEvent(f"tolerated_failure_percentage must be a number from 0 to 100, "
                           f"got {tolerated!r}")
    results = event.get("results")
    if not isinstance(results, dict):
        raise InvalidEvent("the bulk run has no 'results' object {bucket, prefix}")
    _text(results, "bucket"), _text(results, "prefix")
    return {**event, "bucket": bucket, "prefix": prefix}


def list_keys(s3_client, bucket: str, prefix: str) -> list[str]:
    """Every object key under the prefix, in S3's (lexicographic) order; "folder"
    placeholders (keys ending in /) are not images and are left out."""
    keys: list[str] = []
    token = None
    while True:
        try:
            page = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix,
                                             **({"ContinuationToken": token} if token else {}))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise ImageNotFound(f"s3://{bucket}/: no such bucket") from None
            raise ImageNotReadable(f"s3://{bucket}/{prefix}: S3 refused the listing "
                                   f"({code or 'unknown error'})") from None
        keys += [item["Key"] for item in page.get("Contents", [])
                 if not item["Key"].endswith("/")]
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return keys


def plan(event, s3_client) -> dict:
    run = check_run(event)
    keys = list_keys(s3_client, run["bucket"], run["prefix"])
    if not keys:
        raise ImageNotFound(f"s3://{run['bucket']}/{run['prefix']}: no objects under it")
    size = run["batch_size"]
    results = run["results"]
    count = math.ceil(len(keys) / size)
    # the run's choice of endpoint (the staging test's), checked by the batch function
    endpoint = ({settings.EVENT_ENDPOINT_KEY: event[settings.EVENT_ENDPOINT_KEY]}
                if event.get(settings.EVENT_ENDPOINT_KEY) else {})
    batches = [{"batch": n, "bucket": run["bucket"], "keys": keys[n * size:(n + 1) * size],
                "results": {"bucket": results["bucket"],
                            "key": batch_results_key(results["prefix"], n)}, **endpoint}
               for n in range(count)]
    manifest_key = f"{results['prefix'].rstrip('/')}/{MANIFEST_NAME}"
    s3_client.put_object(Bucket=results["bucket"], Key=manifest_key,
                         Body=json.dumps(batches, separators=(",", ":")).encode("utf-8"),
                         ContentType="application/json")
    return {**run, "images": len(keys), "batches": count,
            "manifest": {"bucket": results["bucket"], "key": manifest_key}}


def batch_results_key(results_prefix: str, batch: int) -> str:
    """Where batch n writes its JSON Lines (one line per image)."""
    return f"{results_prefix.rstrip('/')}/results/batch-{batch:06d}.jsonl"


def lambda_handler(event, context):
    return plan(event, aws_client("s3"))
