"""Batch invocations of the local endpoint: many images in one request.

The bulk workflow's classify Lambda (lambdas/classify_image_batch.py) sends a batch of
images in one InvokeEndpoint call, content type BATCH_CONTENT_TYPE:
    request  {"images": [<base64 image bytes>, ...]}
    answer   {"predictions": [[p0, p1, ...] | {"error": <message>, "status": <4xx>}, ...]}
so the per-request cost (HTTP, JSON, the model's per-call overhead) is paid once per batch
and the model runs on the whole batch at once (predict_fn takes N x H x W x 3).

It is served here, in the endpoint's server layer, from the model archive's own
input_fn / predict_fn / output_fn: each image decoded by input_fn (an undecodable one is
that image's error, not the batch's), the decoded ones predicted together. Data capture
records each image as its own invocation (image in, its probabilities out), exactly as
if it had been sent alone, so monitoring reads batch traffic like any other.

On SageMaker the model's code/inference.py must answer this content type itself (see the
branch's report: input_fn returns the stacked images and their per-image errors).
"""
from __future__ import annotations

import base64
import binascii
import json

from lambdas.classify_image_batch import BATCH_CONTENT_TYPE

IMAGE_CONTENT_TYPE = "application/x-image"   # how each image of a batch is decoded


class BatchRequestError(ValueError):
    """The batch body itself is unusable (answered 400)."""

    status_code = 400


def is_batch(content_type: str) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == BATCH_CONTENT_TYPE


def _images(body: bytes) -> list[bytes]:
    try:
        request = json.loads(body)
        encoded = request["images"]
        if not isinstance(encoded, list):
            raise TypeError
        return [base64.b64decode(item, validate=True) for item in encoded]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BatchRequestError(f"a {BATCH_CONTENT_TYPE} body must be "
                                f'{{"images": [<base64>, ...]}} ({exc})') from None


def invoke_batch(model, body: bytes, capture=None) -> tuple[bytes, str]:
    """Answer a batch request with `model` (scones.local.endpoint.model_archive.ServedModel).
    capture(image_bytes, content_type, output_bytes, output_type): called per image."""
    import numpy as np  # here, not at import: commands that only find an endpoint skip it

    images = _images(body)
    module = model.module
    predictions: list = [None] * len(images)
    decoded, where = [], []
    for index, data in enumerate(images):
        try:
            decoded.append(np.asarray(module.input_fn(data, IMAGE_CONTENT_TYPE)))
            where.append(index)
        except Exception as exc:  # the model's own refusal of this image (4xx) or a crash
            status = getattr(exc, "status_code", None)
            predictions[index] = {"error": str(exc),
                                  "status": status if isinstance(status, int) else 500}
    if decoded:
        probabilities = np.asarray(module.predict_fn(np.stack(decoded), model.model))
        for index, row in zip(where, probabilities):
            output = module.output_fn(row, "application/json")
            if isinstance(output, tuple):
                output = output[0]
            if isinstance(output, bytes):
                output = output.decode("utf-8")
            predictions[index] = json.loads(output)
            if capture is not None:
                capture(images[index], IMAGE_CONTENT_TYPE, output.encode("utf-8"),
                        "application/json")
    return (json.dumps({"predictions": predictions}, separators=(",", ":")).encode("utf-8"),
            "application/json")
