"""The bulk workflow's batch request, as the local data capture splits it.

lambdas/classify_image_batch.py sends many images in one InvokeEndpoint call
(BATCH_CONTENT_TYPE, {"images": [<base64>, ...]}), which the model archive's own
inference.py answers ({"predictions": [...]}, one per image); serving it is the model
code's business alone (pipelines/jobs/inference.py). Only capture looks inside here:
monitoring reads one image per record, so each image of a batch that got an answer is
captured as if it had been sent alone (image in, its answer out).
"""
from __future__ import annotations

import base64
import binascii
import json

from lambdas.classify_image_batch import BATCH_CONTENT_TYPE

IMAGE_CONTENT_TYPE = "application/x-image"   # how each captured image of a batch is typed


def is_batch(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == BATCH_CONTENT_TYPE


def per_image_records(body: bytes, output: bytes) -> list[tuple[bytes, str, bytes]]:
    """(image bytes, its content type, its answer as JSON bytes) for each image the model
    answered; nothing for images it refused, or for a body or answer of another shape."""
    try:
        images = json.loads(body)["images"]
        predictions = json.loads(output)["predictions"]
        decoded = [base64.b64decode(image, validate=True) for image in images]
    except (ValueError, KeyError, TypeError, binascii.Error):
        return []
    return [(image, IMAGE_CONTENT_TYPE, json.dumps(answer, separators=(",", ":")).encode())
            for image, answer in zip(decoded, predictions)
            if not (isinstance(answer, dict) and "error" in answer)]
