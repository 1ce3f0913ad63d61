"""Lambda 1 of the inference workflow: check the image in S3 and put it in the event.

An image that fits the state goes into image_data as base64 (the seeds' contract). A
larger one, up to the endpoint's 6 MB, travels by reference: image_data stays "" and
image_ref names the object and its ETag, for classify_image to read (lambdas/events.py
describes both). Only its first bytes are read here, to refuse what is not a PNG or JPEG.
Images over 6 MB are ImageTooLarge, with the size and the limit, before any download.

IAM: s3:GetObject on the images (s3:ListBucket too, for a missing key to be reported as
ImageNotFound rather than an AccessDenied ImageNotReadable).
"""
from __future__ import annotations

import base64

from lambdas import events
from lambdas.clients import aws_client, get_image_object


def serialize_image(event: dict, s3_client) -> dict:
    """The event with image_data (small image) or image_ref (large) filled from
    s3://s3_bucket/s3_key (plain, unwrapped)."""
    event = events.parse_event(event)
    event.pop("image_ref", None)  # this step decides how the image travels
    bucket, key = event["s3_bucket"], event["s3_key"]
    where = f"s3://{bucket}/{key}"
    response = get_image_object(s3_client, bucket, key)
    body = response["Body"]
    length = response.get("ContentLength")
    try:
        if length is None:  # S3 always sends it; stay bounded if something else does not
            data = body.read(events.MAX_INVOKE_ENDPOINT_BODY_BYTES + 1)
            length = len(data)
            events.check_invoke_endpoint_size(length, where)
        else:
            events.check_invoke_endpoint_size(length, where)  # don't download what we refuse
            data = None
        if length <= events.max_image_bytes_for_state(event):
            data = body.read() if data is None else data
            events.image_content_type(data, where)
            result = {**event, "image_data": base64.b64encode(data).decode("ascii")}
        else:
            head = body.read(events.IMAGE_MAGIC_BYTES) if data is None else data
            result = {**event, "image_data": "", "image_ref": {
                "s3_bucket": bucket, "s3_key": key, "etag": response.get("ETag"),
                "size_bytes": length,
                "content_type": events.sniff_content_type(head, where)}}
    finally:
        body.close()
    events.check_state_payload(result, where)
    return result


def lambda_handler(event, context):
    return serialize_image(event, aws_client("s3"))
