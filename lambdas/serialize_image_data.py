"""Lambda 1 of the inference workflow: read the image from S3, put it in the event as base64.

Refuses images that would push the state past Step Functions' payload limit here, with
the size and the limit, rather than letting AWS fail the execution later.
"""
from __future__ import annotations

import base64

from botocore.exceptions import ClientError

from lambdas import events
from lambdas.clients import aws_client
from lambdas.errors import ImageNotFound, ImageNotReadable, ImageTooLarge

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}


def serialize_image(event: dict, s3_client) -> dict:
    """The event with image_data filled from s3://s3_bucket/s3_key (plain, unwrapped)."""
    event = events.parse_event(event)
    bucket, key = event["s3_bucket"], event["s3_key"]
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
    limit = events.max_image_bytes_for_state(event)
    length = response.get("ContentLength")
    if length is not None and length > limit:
        body.close()  # don't download what we will refuse
        raise ImageTooLarge(
            f"{where} is {length} bytes; images over {limit} bytes do not fit Step Functions' "
            f"{events.MAX_STATE_PAYLOAD_BYTES}-byte state payload once base64-encoded")
    data = body.read()
    events.image_content_type(data, where)
    result = {**event, "image_data": base64.b64encode(data).decode("ascii")}
    events.check_state_payload(result, where)
    return result


def lambda_handler(event, context):
    return serialize_image(event, aws_client("s3"))
