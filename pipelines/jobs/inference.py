"""Serving code for SconesNet, in the shape SageMaker's PyTorch inference container calls.

train.py copies this file, image_decoding.py and scones_net.py into the model artifact's
code/ folder; the container puts code/ on sys.path and its toolkit (sagemaker-inference's
Transformer) calls model_fn, input_fn, predict_fn, output_fn. The local endpoint serves
through that same Transformer.
evaluate.py and our local endpoint load this same file from the artifact, so what is
evaluated is exactly what is served.

Request: image bytes (image/png, image/jpeg, application/x-image; any colour mode, depth,
orientation and size up to the limits: decoded to 32x32 RGB by image_decoding.py, the
decoder preprocess.py trains with). Response: JSON list of class probabilities in class
order (model_config.json's class_names), e.g. [0.99, 0.01].
Batch request (BATCH_CONTENT_TYPE, the bulk workflow's): {"images": [<base64 image>, ...]};
response {"predictions": [<one image's response> | {"error", "status"}, ...]}, in order;
an image that does not decode is that image's error, never the batch's.

Bounded per request: a body over 6 MB is a 413 (SageMaker's own limit), an image over
MAX_IMAGE_PIXELS (MAX_JPEG_PIXELS for JPEG, decoded at 1/8 scale) a 413 from its header
alone, bytes after the image's end marker a 400; each names the limit or the fault.

The probabilities are calibrated: logits are divided by model_config.json's "temperature"
(fitted by train.py on the validation split) before the softmax, so a confidence of 0.9
means about 9 in 10 right, and the artifact's "confidence_threshold" means what it says.
"""
from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

IMAGE_CONTENT_TYPES = ("image/png", "image/jpeg", "application/x-image")
# The bulk workflow's request: many images in one invocation (lambdas/classify_image_batch.py
# sends it; the same name is there). Body {"images": [<base64 image>, ...]}; answer
# {"predictions": [<the image's answer> | {"error": <message>, "status": <4xx>}, ...]}.
BATCH_CONTENT_TYPE = "application/x-scones-image-batch+json"
# Every request content type this code answers; the registered model package lists exactly
# these (pipelines/pipeline.py CONTENT_TYPES, checked equal by a test).
SUPPORTED_CONTENT_TYPES = IMAGE_CONTENT_TYPES + (BATCH_CONTENT_TYPE,)
JSON_CONTENT_TYPE = "application/json"
BATCH_SIZE = 256
# SageMaker's InvokeEndpoint refuses request bodies over 6 MB; a body over it reaching this
# code (our local endpoint, or a container called directly) is refused the same way.
MAX_REQUEST_BODY_BYTES = 6 * 1024 * 1024

try:  # inside SageMaker's container: the toolkit turns these errors into 4xx answers
    from sagemaker_inference.errors import GenericInferenceToolkitError
    _ERROR_BASES: tuple = (GenericInferenceToolkitError, ValueError)
except ImportError:
    _ERROR_BASES = (ValueError,)


class InvalidInputError(*_ERROR_BASES):
    """The request cannot be served: `status_code` is the HTTP status to answer with
    (400 undecodable body, 413 body or image too large, 415 unsupported content type,
    406 unsupported accept)."""

    def __init__(self, message: str, status_code: int = 400):
        self.status_code = status_code
        self.message = message
        self.phrase = message
        Exception.__init__(self, message)

    def __str__(self) -> str:
        return self.message


def _load_neighbour(module_name: str):
    """Import <module_name>.py from this file's folder under a private name.

    By file path rather than `import scones_net`, so two artifacts loaded in one process
    (an old and a new model version) each get their own code.
    """
    path = Path(__file__).resolve().parent / f"{module_name}.py"
    name = f"_{module_name}_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


# The one decoder (image_decoding.py), shipped next to this file in code/; preprocess.py
# decodes the training images with the same module.
image_decoding = _load_neighbour("image_decoding")
MAX_IMAGE_PIXELS = image_decoding.MAX_IMAGE_PIXELS
MAX_JPEG_PIXELS = image_decoding.MAX_JPEG_PIXELS


def decode_image(data: bytes, image_size: int = 32) -> np.ndarray:
    """image_decoding.decode_image, its refusals as this module's InvalidInputError (which
    the serving toolkit answers with their status code)."""
    try:
        return image_decoding.decode_image(data, image_size)
    except image_decoding.ImageDecodeError as exc:
        raise InvalidInputError(exc.message, exc.status_code) from None


class ServedModel:
    """The network plus what serving needs to feed it: class names and normalisation."""

    def __init__(self, net: torch.nn.Module, config: dict, device: torch.device, scones_net):
        self.net = net
        self.config = config
        self.class_names = list(config["class_names"])
        self.device = device
        self.mean = torch.tensor(config["mean"], dtype=torch.float32, device=device)
        self.std = torch.tensor(config["std"], dtype=torch.float32, device=device)
        self.image_size = int(config["image_size"])
        # Artifacts from before calibration have no temperature: 1.0 is the plain softmax.
        self.temperature = float(config.get("temperature", 1.0))
        if not self.temperature > 0:
            raise ValueError(f"model_config.json: temperature must be positive, "
                             f"got {config.get('temperature')!r}")
        self._normalise = scones_net.normalise


def model_fn(model_dir: str) -> ServedModel:
    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / "model_config.json", model_dir / "model.pt"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from the model artifact")
    config = json.loads(config_path.read_text())
    scones_net = _load_neighbour("scones_net")
    if config.get("architecture") != scones_net.ARCHITECTURE:
        raise ValueError(f"{config_path}: architecture {config.get('architecture')!r} "
                         f"is not {scones_net.ARCHITECTURE!r}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # A serving process answers one 32x32 image per request: an intra-op thread pool costs
    # more than it saves (measured on 2 busy cores: median 2.5 ms with 1 thread, 8.9 ms with
    # 2, and 400 ms stalls when the threads wait on each other). model_fn runs once per
    # serving worker, so this sets the worker's policy.
    torch.set_num_threads(1)
    net = scones_net.SconesNet(num_classes=len(config["class_names"]), width=int(config["width"]))
    # weights_only: the artifact's pickle may only hold tensors, never code to run.
    state = torch.load(weights_path, map_location=device, weights_only=True)
    net.load_state_dict(state)
    net = net.to(device=device, memory_format=torch.channels_last).eval()
    return ServedModel(net, config, device, scones_net)




def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _request_bytes(request_body) -> bytes:
    if isinstance(request_body, str):  # the toolkit hands JSON/CSV bodies over decoded
        request_body = request_body.encode("utf-8")
    if isinstance(request_body, (bytearray, memoryview)):
        request_body = bytes(request_body)
    if not isinstance(request_body, bytes) or not request_body:
        raise InvalidInputError("request body is empty: send the image bytes", 400)
    if len(request_body) > MAX_REQUEST_BODY_BYTES:
        raise InvalidInputError(f"request body is {len(request_body)} bytes, over the "
                                f"{MAX_REQUEST_BODY_BYTES}-byte (6 MB) limit of SageMaker "
                                f"endpoints: send a smaller image", 413)
    return request_body


# (Plain classes, not dataclasses: this file is also exec'd without a sys.modules entry.)
class ImageBatch:
    """A batch request decoded: the images that decoded (N x H x W x 3, in request order),
    their positions in the request, and the refusal of each image that did not decode."""

    def __init__(self, images: np.ndarray, positions: list[int],
                 refused: dict[int, InvalidInputError]):
        self.images = images
        self.positions = positions
        self.refused = refused

    @property
    def size(self) -> int:
        return len(self.positions) + len(self.refused)


class BatchPrediction:
    """predict_fn's answer to an ImageBatch: a probability row per decoded image."""

    def __init__(self, probabilities: np.ndarray, batch: ImageBatch):
        self.probabilities = probabilities
        self.batch = batch


def _image_batch(request_body) -> ImageBatch:
    """BATCH_CONTENT_TYPE's body {"images": [<base64 image>, ...]} decoded image by image:
    one undecodable image is that image's refusal, not the batch's."""
    body = _request_bytes(request_body)
    try:
        encoded = json.loads(body)["images"]
        if not isinstance(encoded, list):
            raise TypeError("images is not a list")
        images = [base64.b64decode(item, validate=True) for item in encoded]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidInputError(f"a {BATCH_CONTENT_TYPE} body must be "
                                f'{{"images": [<base64 image>, ...]}} '
                                f"({type(exc).__name__}: {exc})", 400) from None
    decoded, positions, refused = [], [], {}
    for position, data in enumerate(images):
        try:
            if not data:
                raise InvalidInputError("image is empty: send the image bytes", 400)
            decoded.append(decode_image(data))
            positions.append(position)
        except InvalidInputError as exc:
            refused[position] = exc
    stacked = np.stack(decoded) if decoded else np.zeros((0, 32, 32, 3), dtype=np.uint8)
    return ImageBatch(stacked, positions, refused)


def input_fn(request_body, content_type: str = "application/x-image"):
    """An image request -> its decoded image (H x W x 3 uint8); a batch request -> an
    ImageBatch."""
    media_type = _media_type(content_type)
    if media_type == BATCH_CONTENT_TYPE:
        return _image_batch(request_body)
    if media_type not in IMAGE_CONTENT_TYPES:
        raise InvalidInputError(f"unsupported content type {content_type!r}: send one of "
                                f"{', '.join(SUPPORTED_CONTENT_TYPES)}", 415)
    return decode_image(_request_bytes(request_body))


def tta_logits(model: ServedModel, images_uint8_nhwc: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x 3 -> float32 N x 2 x classes logits: each image and its mirror image.

    The mirror is cheap test-time augmentation matching the horizontal flips seen in training.
    """
    images = np.asarray(images_uint8_nhwc)
    if images.ndim == 3:
        images = images[None]
    expected = (model.image_size, model.image_size, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
        raise InvalidInputError(f"expected uint8 N x {expected[0]} x {expected[1]} x 3 images, "
                                f"got {images.dtype} {images.shape}", 400)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), BATCH_SIZE):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + BATCH_SIZE]))
            x = model._normalise(batch.to(model.device), model.mean, model.std)
            logits = model.net.test_time_logits(x)
            outputs.append(logits.float().cpu().numpy())
    if not outputs:
        return np.zeros((0, 2, len(model.class_names)), dtype=np.float32)
    return np.concatenate(outputs)


def probabilities_from_logits(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """N x views x classes logits -> N x classes: mean over views of softmax(logits / T).

    The one place temperature is applied: train.py fits T through this function and every
    consumer (evaluate.py, the endpoint, SageMaker) gets its probabilities through it.
    """
    scaled = torch.from_numpy(np.asarray(logits, dtype=np.float32)) / float(temperature)
    return torch.softmax(scaled, dim=-1).mean(dim=1).numpy()


def predict_batch(model: ServedModel, images_uint8_nhwc: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x 3 -> float32 N x classes calibrated probabilities."""
    return probabilities_from_logits(tta_logits(model, images_uint8_nhwc), model.temperature)


def predict_fn(input_data, model: ServedModel):
    """One decoded image (H x W x 3) -> its class probabilities; a stack -> N x classes;
    an ImageBatch -> a BatchPrediction (all its decoded images predicted at once)."""
    if isinstance(input_data, ImageBatch):
        return BatchPrediction(predict_batch(model, input_data.images), input_data)
    probabilities = predict_batch(model, input_data)
    return probabilities[0] if np.asarray(input_data).ndim == 3 else probabilities


def image_answer(probabilities) -> list:
    """What one image's answer holds: its class probabilities in class order, rounded."""
    return np.asarray(probabilities, dtype=float).round(6).tolist()


def batch_answer(prediction: BatchPrediction) -> dict:
    """{"predictions": [one image's answer | {"error", "status"}, ...]} in request order."""
    answers: list = [None] * prediction.batch.size
    for position, refusal in prediction.batch.refused.items():
        answers[position] = {"error": refusal.message, "status": refusal.status_code}
    for position, row in zip(prediction.batch.positions, prediction.probabilities):
        answers[position] = image_answer(row)
    return {"predictions": answers}


def output_fn(prediction, accept: str | None = JSON_CONTENT_TYPE) -> str:
    media_type = _media_type(accept)
    if media_type not in ("", "*/*", JSON_CONTENT_TYPE):
        raise InvalidInputError(f"unsupported accept type {accept!r}: this model answers "
                                f"{JSON_CONTENT_TYPE}", 406)
    if isinstance(prediction, BatchPrediction):
        return json.dumps(batch_answer(prediction), separators=(",", ":"))
    return json.dumps(image_answer(prediction))


if __name__ == "__main__":
    # By hand: python inference.py MODEL_DIR IMAGE... -> one JSON line per image.
    if len(sys.argv) < 3:
        print("usage: inference.py MODEL_DIR IMAGE [IMAGE...]", file=sys.stderr)
        sys.exit(2)
    served = model_fn(sys.argv[1])
    for image_path in sys.argv[2:]:
        try:
            data = input_fn(Path(image_path).read_bytes(), "application/x-image")
        except (InvalidInputError, OSError) as exc:
            print(f"error: {image_path}: {exc}", file=sys.stderr)
            sys.exit(2)
        print(json.dumps({"file": os.path.basename(image_path),
                          "probabilities": json.loads(output_fn(predict_fn(data, served)))}))
