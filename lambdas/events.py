"""The workflow's event: parsing, validation, image sniffing and the AWS limits that bite.

Input shape (the seeds'): {"s3_bucket", "s3_key", "image_data": "", "inferences": []}.
The original course code wrapped it as {"statusCode": 200, "body": {...}} (body sometimes
a JSON string); such events are unwrapped, and outputs are always plain.

How the image travels (serialize_image_data decides, classify_image follows):
  * by value, as today: an image that fits the state (about 190 KB) is base64 in image_data;
  * by reference: a larger one, up to InvokeEndpoint's 6 MB, stays in S3. image_data is ""
    and image_ref = {"s3_bucket", "s3_key", "etag", "size_bytes", "content_type"} names the
    exact object version serialize checked; classify reads it (GetObject, If-Match the
    ETag) and sends the bytes to the endpoint. Nothing over the state limit enters the state.
Images over 6 MB are ImageTooLarge at serialize, before they are downloaded.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from lambdas.errors import ImageTooLarge, InvalidEvent, InvalidImage

# Step Functions refuses a state input or output over 256 KiB (UTF-8 JSON).
MAX_STATE_PAYLOAD_BYTES = 256 * 1024
# A Task state's result is the lambda:invoke response: our payload plus ExecutedVersion,
# StatusCode and SDK metadata, before OutputPath trims it; later steps add inferences and
# a label. Keep this much room so an image accepted by serialize never fails downstream.
PAYLOAD_HEADROOM_BYTES = 8 * 1024
# InvokeEndpoint refuses request bodies over 6 MB: the largest image the workflow takes.
MAX_INVOKE_ENDPOINT_BODY_BYTES = 6 * 1024 * 1024
# How many leading bytes serialize reads of an image it passes by reference: the magic.
IMAGE_MAGIC_BYTES = 16

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# Every PNG ends with an IEND chunk (type + CRC). A PNG that does not end with it was cut
# short or has data appended after the image; the endpoint refuses both (400), so they are
# an InvalidImage here, at the first step that holds the bytes, not a model error two steps
# later. JPEGs are left to the endpoint's decoder, which walks their structure to the end
# marker (a cut or padded JPEG is its 400, an EndpointError here).
PNG_END = b"IEND\xaeB`\x82"


def unwrap(event: Any) -> dict:
    """The plain event: a {"body": ...} wrapper (dict or JSON string) is removed."""
    if not isinstance(event, dict):
        raise InvalidEvent(f"the event must be a JSON object, got {type(event).__name__}")
    if "body" in event and "s3_key" not in event:
        body = event["body"]
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError as exc:
                raise InvalidEvent(f"the event's body is a string but not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidEvent(f"the event's body must be a JSON object, "
                               f"got {type(body).__name__}")
        event = body
    return event


def s3_url(event: dict) -> str:
    """s3://bucket/key for messages, tolerant of a half-valid event."""
    return f"s3://{event.get('s3_bucket', '?')}/{event.get('s3_key', '?')}"


def parse_event(event: Any, *, need_image: bool = False, need_inferences: bool = False) -> dict:
    """Unwrap and validate; returns a new plain dict with all four keys present.

    s3_bucket and s3_key are always required (every message names the image);
    image_data must be non-empty when need_image, inferences when need_inferences.
    """
    event = unwrap(event)
    where = s3_url(event)
    for key in ("s3_bucket", "s3_key"):
        if key not in event:
            raise InvalidEvent(f"the event has no {key!r} (keys: {sorted(event)})")
        value = event[key]
        if not isinstance(value, str) or not value:
            raise InvalidEvent(f"{key} must be a non-empty string, got {value!r}")
    image_data = event.get("image_data", "")
    if image_data is None:
        image_data = ""
    if not isinstance(image_data, str):
        raise InvalidEvent(f"image_data must be a base64 string, got "
                           f"{type(image_data).__name__} (image {where})")
    image_ref = parse_image_ref(event.get("image_ref"), where)
    if need_image and not image_data and image_ref is None:
        if "image_data" not in event:
            raise InvalidEvent(f"the event has no 'image_data' (image {where}): "
                               f"run serialize_image_data first")
        raise InvalidEvent(f"image_data is empty (image {where}): run serialize_image_data first")
    inferences = event.get("inferences", [])
    if inferences is None:
        inferences = []
    if not isinstance(inferences, list) or not all(is_number(v) for v in inferences):
        raise InvalidEvent(f"inferences must be a list of numbers, got {inferences!r} "
                           f"(image {where})")
    if need_inferences and not inferences:
        raise InvalidEvent(f"inferences are empty (image {where}): run classify_image first")
    parsed = {**event, "image_data": image_data, "inferences": [float(v) for v in inferences]}
    if image_ref is None:
        parsed.pop("image_ref", None)
    else:
        parsed["image_ref"] = image_ref
    return parsed


def parse_image_ref(image_ref: Any, where: str) -> dict | None:
    """image_ref validated (see the module docstring), or None when absent or null."""
    if image_ref is None:
        return None
    if not isinstance(image_ref, dict):
        raise InvalidEvent(f"image_ref must be an object naming the image in S3, got "
                           f"{type(image_ref).__name__} (image {where})")
    for key in ("s3_bucket", "s3_key"):
        value = image_ref.get(key)
        if not isinstance(value, str) or not value:
            raise InvalidEvent(f"image_ref.{key} must be a non-empty string, got {value!r} "
                               f"(image {where})")
    etag = image_ref.get("etag")
    if etag is not None and not isinstance(etag, str):
        raise InvalidEvent(f"image_ref.etag must be a string, got {etag!r} (image {where})")
    return dict(image_ref)


def is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def sniff_content_type(head: bytes, where: str) -> str:
    """image/png or image/jpeg from the leading bytes alone; InvalidImage otherwise."""
    if not head:
        raise InvalidImage(f"{where} is empty (0 bytes)")
    if head.startswith(PNG_MAGIC):
        return "image/png"
    if head.startswith(JPEG_MAGIC):
        return "image/jpeg"
    # The file's bytes are never echoed: they may be anything the caller could read.
    raise InvalidImage(f"{where} is not a PNG or JPEG image (neither signature at its start)")


def image_content_type(data: bytes, where: str) -> str:
    """image/png or image/jpeg for a whole image (a PNG checked to end with IEND);
    InvalidImage otherwise."""
    content_type = sniff_content_type(data, where)
    if content_type == "image/png" and not data.endswith(PNG_END):
        end = data.rfind(PNG_END)
        if end < 0:
            raise InvalidImage(f"{where} is a truncated PNG ({len(data)} bytes, no IEND chunk)")
        raise InvalidImage(f"{where} has {len(data) - end - len(PNG_END)} bytes after the end "
                           f"of its PNG image (IEND): re-save it without the appended data")
    return content_type


def decode_image_data(image_data: str, where: str) -> bytes:
    try:
        return base64.b64decode(image_data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"image_data of {where} is not valid base64: {exc}") from None


def payload_size(event: dict) -> int:
    """Bytes of the event as Step Functions would carry it (compact UTF-8 JSON)."""
    return len(json.dumps(event, separators=(",", ":")).encode("utf-8"))


def max_image_bytes_for_state(event: dict) -> int:
    """The largest raw image that, base64-encoded into this event, keeps the state
    payload under the limit with headroom."""
    budget = MAX_STATE_PAYLOAD_BYTES - PAYLOAD_HEADROOM_BYTES - payload_size(
        {**event, "image_data": ""})
    return max(0, budget // 4 * 3)


def check_invoke_endpoint_size(size: int, where: str) -> None:
    """ImageTooLarge for an image InvokeEndpoint would refuse (over 6 MB)."""
    if size > MAX_INVOKE_ENDPOINT_BODY_BYTES:
        raise ImageTooLarge(
            f"{where} is {size} bytes, over the {MAX_INVOKE_ENDPOINT_BODY_BYTES}-byte (6 MB) "
            f"limit of a SageMaker endpoint request: resize or re-compress the image")


def check_state_payload(event: dict, where: str) -> None:
    size = payload_size(event)
    limit = MAX_STATE_PAYLOAD_BYTES - PAYLOAD_HEADROOM_BYTES
    if size > limit:
        raise ImageTooLarge(
            f"{where}: the event with the base64 image would be {size} bytes, over the "
            f"{limit}-byte budget under Step Functions' {MAX_STATE_PAYLOAD_BYTES}-byte "
            f"state payload limit; resize the image (at most "
            f"{max_image_bytes_for_state(event)} bytes raw)")
