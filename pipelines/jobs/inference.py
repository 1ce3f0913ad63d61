"""Serving code for SconesNet, in the shape SageMaker's PyTorch inference container calls.

train.py copies this file and scones_net.py into the model artifact's code/ folder; the
container puts code/ on sys.path and calls model_fn, input_fn, predict_fn, output_fn.
evaluate.py and our local endpoint load this same file from the artifact, so what is
evaluated is exactly what is served.

Request: image bytes (image/png, image/jpeg, application/x-image; any colour mode, any
size: converted to RGB and resized to 32x32). Response: JSON list of class probabilities
in class order (model_config.json's class_names), e.g. [0.99, 0.01].

The probabilities are calibrated: logits are divided by model_config.json's "temperature"
(fitted by train.py on the validation split) before the softmax, so a confidence of 0.9
means about 9 in 10 right, and the artifact's "confidence_threshold" means what it says.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_CONTENT_TYPES = ("image/png", "image/jpeg", "application/x-image")
JSON_CONTENT_TYPE = "application/json"
BATCH_SIZE = 256

try:  # inside SageMaker's container: the toolkit turns these errors into 4xx answers
    from sagemaker_inference.errors import GenericInferenceToolkitError
    _ERROR_BASES: tuple = (GenericInferenceToolkitError, ValueError)
except ImportError:
    _ERROR_BASES = (ValueError,)


class InvalidInputError(*_ERROR_BASES):
    """The request cannot be served: `status_code` is the HTTP status to answer with
    (400 undecodable body, 415 unsupported content type, 406 unsupported accept)."""

    def __init__(self, message: str, status_code: int = 400):
        self.status_code = status_code
        self.message = message
        self.phrase = message
        Exception.__init__(self, message)

    def __str__(self) -> str:
        return self.message


def _load_scones_net():
    """Import scones_net.py from this file's folder under a private name.

    By file path rather than `import scones_net`, so two artifacts loaded in one process
    (an old and a new model version) each get their own network code.
    """
    path = Path(__file__).resolve().parent / "scones_net.py"
    name = f"_scones_net_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
    scones_net = _load_scones_net()
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


def decode_image(data: bytes, image_size: int = 32) -> np.ndarray:
    """Image bytes -> uint8 image_size x image_size x 3 RGB (same policy as preprocess.py)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGBA") if "transparency" in image.info else image
                image = image.convert("RGB")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.BICUBIC)
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidInputError(f"request body is not a readable PNG/JPEG image "
                                f"({len(data)} bytes): {exc}", 400) from None


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def input_fn(request_body, content_type: str = "application/x-image") -> np.ndarray:
    media_type = _media_type(content_type)
    if media_type not in IMAGE_CONTENT_TYPES:
        raise InvalidInputError(f"unsupported content type {content_type!r}: send one of "
                                f"{', '.join(IMAGE_CONTENT_TYPES)}", 415)
    if isinstance(request_body, str):
        request_body = request_body.encode("latin1")
    if isinstance(request_body, (bytearray, memoryview)):
        request_body = bytes(request_body)
    if not isinstance(request_body, bytes) or not request_body:
        raise InvalidInputError("request body is empty: send the image bytes", 400)
    return decode_image(request_body)


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
            logits = torch.stack((model.net(x), model.net(x.flip(3))), dim=1)
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


def predict_fn(input_data: np.ndarray, model: ServedModel) -> np.ndarray:
    """One decoded image (H x W x 3) -> its class probabilities; a batch -> N x classes."""
    probabilities = predict_batch(model, input_data)
    return probabilities[0] if np.asarray(input_data).ndim == 3 else probabilities


def output_fn(prediction, accept: str | None = JSON_CONTENT_TYPE) -> str:
    media_type = _media_type(accept)
    if media_type not in ("", "*/*", JSON_CONTENT_TYPE):
        raise InvalidInputError(f"unsupported accept type {accept!r}: this model answers "
                                f"{JSON_CONTENT_TYPE}", 406)
    return json.dumps(np.asarray(prediction, dtype=float).round(6).tolist())


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
