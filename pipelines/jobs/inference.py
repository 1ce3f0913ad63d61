"""Serving code for SconesNet, in the shape SageMaker's PyTorch inference container calls.

train.py copies this file and scones_net.py into the model artifact's code/ folder; the
container puts code/ on sys.path and calls model_fn, input_fn, predict_fn, output_fn.
evaluate.py and our local endpoint load this same file from the artifact, so what is
evaluated is exactly what is served.

Request: image bytes (image/png, image/jpeg, application/x-image; any colour mode, any
size up to the limits: converted to RGB and downscaled (Lanczos) to 32x32, see decode_image).
Response: JSON list of class probabilities in class order (model_config.json's
class_names), e.g. [0.99, 0.01]. With `Accept: application/json; verbose=true` (what the
workflow's classify Lambda sends): {"probabilities": [...], "ood_score": s,
"ood_threshold": t}, the picture's out-of-distribution score and the version's threshold
(see "not a vehicle" below; null for an artifact without a reference).

Bounded per request: a body over 6 MB is a 413 (SageMaker's own limit), an image over
MAX_IMAGE_PIXELS (MAX_JPEG_PIXELS for JPEG, decoded at 1/8 scale) a 413 from its header
alone, bytes after the image's end marker a 400; each names the limit or the fault.

The probabilities are calibrated: logits are divided by model_config.json's "temperature"
(fitted by train.py on the validation split) before the softmax, so a confidence of 0.9
means about 9 in 10 right, and the artifact's "confidence_threshold" means what it says.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_CONTENT_TYPES = ("image/png", "image/jpeg", "application/x-image")
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


_DecodeError = InvalidInputError  # what the shared decoding block raises, here


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
    served = ServedModel(net, config, device, scones_net)
    served.ood = load_ood_reference(model_dir, config)
    return served


# --- image decoding: this block is identical in inference.py and preprocess.py ---------
# (preprocess.py ships as a single file, so the decoder is written twice; a test compares
# the two blocks' text, so a served image is decoded exactly as a training image was.)

# The largest raster decoded at full size: 40 MP is 160 MB as RGBA, the most one request
# may cost. Larger PNGs (a 445 KB PNG can declare 12000x12000) are refused from the header,
# before any pixel is decoded.
MAX_IMAGE_PIXELS = 40_000_000
# JPEGs are decoded at 1/8 scale (DCT scaling, Image.draft), so one of 80 MP (a 48-64 MP
# phone photo) costs at most 1.25 MP of raster. 80 MP stays under Pillow's own
# decompression-bomb warning (89.5 MP), so an accepted JPEG never trips it.
MAX_JPEG_PIXELS = 80_000_000
# Downscaling filter: Lanczos, antialiased (Pillow widens a filter's support by the
# reduction factor, so every source pixel counts). Measured in benchmarks/bench_photos.py
# on 200 held-out images blown up (bicubic or Lanczos) to 640x480 and 4032x3024: it brings
# a photo closest to its 32x32 original (pixel error 1.9-2.5 against 2.3-5.0, probability
# drift 0.013-0.026 against 0.025-0.068 for box, bilinear and bicubic) and agrees with the
# 32x32 class most often (97-99.5%, the others 93-97%). The whole image is squashed to
# the square, never cropped or letterboxed: training images are whole scenes at 32x32
# with no bars, and a centre crop agreed less (95.5-96.5%).
RESIZE_FILTER = Image.Resampling.LANCZOS
# Integer pre-reduction (Image.reduce, a box average) down to at least this many times the
# target size before the final filter: cheap, and the full-size raster is freed early.
REDUCE_TO_MULTIPLE = 4
DECODED_FORMATS = ("PNG", "JPEG")  # never hand a request to Pillow's other parsers
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# After a JPEG scan: a marker is 0xFF (fill bytes allowed) then a code that is neither a
# stuffed zero nor a restart marker (those belong to the entropy-coded data).
_JPEG_MARKER_IN_SCAN = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")


def _png_end(data: bytes) -> int | None:
    """Offset just after the IEND chunk, or None when the chunks do not reach one."""
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        chunk_type = data[position + 4:position + 8]
        position += 12 + length
        if chunk_type == b"IEND":
            return position if position <= len(data) else None
    return None


def _jpeg_end(data: bytes, start: int = 0) -> int | None:
    """Offset just after the EOI marker that ends the JPEG starting at `start`, or None
    when not found.

    Walks the marker segments by their lengths (so a thumbnail's own EOI inside EXIF is
    skipped) and each entropy-coded scan to its next marker.
    """
    if data[start:start + 2] != b"\xff\xd8":
        return None
    position = start + 2  # after SOI
    while position < len(data):
        if data[position] != 0xFF:
            return None
        while position < len(data) and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= len(data):
            return None
        marker = data[position]
        position += 1
        if marker == 0xD9:  # EOI
            return position
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            continue
        if position + 2 > len(data):
            return None
        position += int.from_bytes(data[position:position + 2], "big")
        if marker == 0xDA:  # SOS: the entropy-coded scan follows the header
            found = _JPEG_MARKER_IN_SCAN.search(data, position)
            if found is None:
                return None
            position = found.end() - 2  # at the last 0xFF before the marker code
    return None


def _trailing_bytes(data: bytes, image: Image.Image) -> int:
    """How many bytes follow the image's end marker (0 when none or not found: a file cut
    short is the decoder's to report). An MPO (a camera's JPEG with more pictures declared
    in its MP index: depth maps, HDR gain maps) ends after its last declared picture."""
    if image.format == "PNG":
        end = _png_end(data)
    else:
        end = 0
        pictures = image.mpinfo.get(0xB002, []) if image.format == "MPO" else []
        for _ in range(max(1, len(pictures))):
            end = _jpeg_end(data, end)
            if end is None:
                break
    return 0 if end is None else len(data) - end


def decode_image(data: bytes, image_size: int = 32) -> np.ndarray:
    """PNG/JPEG bytes (any colour mode, any size) -> uint8 image_size x image_size x 3 RGB.

    Raises _DecodeError(message, status_code): 400 for bytes that are not one whole PNG or
    JPEG (trailing bytes after its end included), 413 for images over the pixel limits.
    Memory is bounded by the limits: JPEGs decode at 1/8 scale, other images are
    pre-reduced by an integer factor before the final resize.
    """
    try:
        with Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as image:
            width, height = image.size
            is_jpeg = image.format in ("JPEG", "MPO")  # MPO: a JPEG with more pictures
            limit = MAX_JPEG_PIXELS if is_jpeg else MAX_IMAGE_PIXELS
            if width * height > limit:
                raise _DecodeError(
                    f"image is {width}x{height} ({width * height / 1e6:.1f} MP), over the "
                    f"{limit / 1e6:.0f} MP limit for {image.format}: send it smaller", 413)
            extra = _trailing_bytes(data, image)
            if extra:
                raise _DecodeError(
                    f"{extra} bytes follow the end of the {image.format} image: send the "
                    f"image alone (re-save it to drop appended data)", 400)
            if is_jpeg and (width, height) != (image_size, image_size):
                image.draft("RGB", (image_size, image_size))  # DCT scaling: up to 1/8
            image.load()
            if image.mode not in ("RGB", "RGBA", "L", "LA") or "transparency" in image.info:
                # Palette/LA images with transparency convert via RGBA to keep colours right.
                image = image.convert("RGBA") if "transparency" in image.info else image
                image = image.convert("RGB")
            if image.size != (image_size, image_size):
                factors = tuple(max(1, side // (image_size * REDUCE_TO_MULTIPLE))
                                for side in image.size)
                if factors != (1, 1):
                    image = image.reduce(factors)
                image = image.convert("RGB").resize((image_size, image_size), RESIZE_FILTER)
            elif image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _DecodeError(f"image is over the pixel limit ({MAX_IMAGE_PIXELS / 1e6:.0f} MP, "
                           f"{MAX_JPEG_PIXELS / 1e6:.0f} MP for JPEG): {exc}", 413) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError,
            struct.error) as exc:
        if isinstance(exc, _DecodeError):
            raise
        raise _DecodeError(f"not a readable PNG/JPEG image ({len(data)} bytes): {exc}",
                           400) from None
# --- end of the image decoding block ---------------------------------------------------


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
    if len(request_body) > MAX_REQUEST_BODY_BYTES:
        raise InvalidInputError(f"request body is {len(request_body)} bytes, over the "
                                f"{MAX_REQUEST_BODY_BYTES}-byte (6 MB) limit of SageMaker "
                                f"endpoints: send a smaller image", 413)
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


# --- out of distribution: "not a vehicle" ------------------------------------------------
# A picture unlike every training picture (noise, a flat colour, a texture, a smeared or
# tiled photo) still gets two probabilities that sum to 1, often a confident one. Its
# out-of-distribution score says how unlike it is: the Mahalanobis distance of a small
# description of the decoded image from the training pictures' (one covariance, shrunk
# towards its diagonal). The description is about the image, not the network, whose
# penultimate features separated none of the synthetic sets (AUROC 0.44-0.63 in
# benchmarks/bench_not_a_vehicle.py): luma level and contrast, gradient energy at two
# scales (noise high, blur low), saturation, colour spread, the share of flat 4 x 4 blocks,
# how far the luma lies from the training pictures' principal components (textures, noise),
# and blockiness (discontinuities on a 4/8/16-pixel grid: tiles, collages, scrambled photos).
# train.py fits the reference on the training split and picks the threshold on validation:
# the score OOD_TARGET_FALSE_REJECTION of real validation photos exceed (ood_reference.npz
# and model_config.json's "ood_threshold"). The verbose answer carries both; the workflow's
# filter refuses a picture over its version's threshold as NotAVehicle.
OOD_REFERENCE_FILE = "ood_reference.npz"
OOD_TARGET_FALSE_REJECTION = 0.02
OOD_PRINCIPAL_COMPONENTS = 32
VERBOSE_PARAMETER = "verbose"
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _luma(images_uint8_nhwc: np.ndarray) -> np.ndarray:
    images = np.asarray(images_uint8_nhwc)
    images = images[None] if images.ndim == 3 else images
    return (images.astype(np.float32) / 255.0) @ _LUMA_WEIGHTS


def image_statistics(images_uint8_nhwc: np.ndarray) -> np.ndarray:
    """N x 32 x 32 x 3 uint8 -> N x 9: luma mean and std, gradient energy at full and half
    resolution (log), saturation mean and std, colour spread, share of flat 4 x 4 blocks,
    blockiness (log ratio of the gradient on a 4/8/16-pixel grid to the gradient off it)."""
    images = np.asarray(images_uint8_nhwc)
    images = images[None] if images.ndim == 3 else images
    rgb = images.astype(np.float32) / 255.0
    luma = rgb @ _LUMA_WEIGHTS
    n, h, w = luma.shape

    def gradient(image):
        return (np.abs(np.diff(image, axis=1)).mean(axis=(1, 2))
                + np.abs(np.diff(image, axis=2)).mean(axis=(1, 2)))
    half = luma.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    blocks = luma.reshape(n, h // 4, 4, w // 4, 4).std(axis=(2, 4))
    saturation = rgb.max(axis=3) - rgb.min(axis=3)
    across = np.abs(np.diff(luma, axis=2)).mean(axis=1)   # N x (w-1): column to column
    down = np.abs(np.diff(luma, axis=1)).mean(axis=2)     # N x (h-1): row to row
    blockiness = np.full(n, -np.inf, dtype=np.float32)
    for period in (4, 8, 16):
        on = (np.arange(across.shape[1]) % period) == period - 1
        ratio = (np.log(across[:, on].mean(axis=1) + 1e-3)
                 - np.log(across[:, ~on].mean(axis=1) + 1e-3)
                 + np.log(down[:, on].mean(axis=1) + 1e-3)
                 - np.log(down[:, ~on].mean(axis=1) + 1e-3))
        blockiness = np.maximum(blockiness, ratio)
    return np.stack([luma.mean(axis=(1, 2)), luma.std(axis=(1, 2)),
                     np.log(gradient(luma) + 1e-3), np.log(gradient(half) + 1e-3),
                     saturation.mean(axis=(1, 2)), saturation.std(axis=(1, 2)),
                     rgb.std(axis=(1, 2)).mean(axis=1), (blocks < 0.01).mean(axis=(1, 2)),
                     blockiness], axis=1)


def ood_features(images_uint8_nhwc: np.ndarray, reference: dict) -> np.ndarray:
    """N x 11: image_statistics plus the luma's distance from the training pictures'
    principal components (log residual energy, absolute and relative)."""
    luma = _luma(images_uint8_nhwc).reshape(-1, reference["luma_mean"].shape[0])
    centred = luma - reference["luma_mean"]
    components = reference["components"]
    residual = centred - (centred @ components.T) @ components
    energy = np.log((residual ** 2).mean(axis=1) + 1e-6)
    relative = energy - np.log((centred ** 2).mean(axis=1) + 1e-6)
    return np.concatenate([image_statistics(images_uint8_nhwc).astype(np.float64),
                           energy[:, None], relative[:, None]], axis=1)


def fit_out_of_distribution(model, train_images: np.ndarray, validation_images: np.ndarray,
                            model_dir,
                            target_false_rejection: float = OOD_TARGET_FALSE_REJECTION) -> dict:
    """Fit the reference on the training pictures (written to model_dir/ood_reference.npz)
    and choose the threshold on validation; returns the keys for model_config.json. `model`
    is unused (the description is of the image): kept so the call reads as the others."""
    luma = _luma(train_images).reshape(len(train_images), -1).astype(np.float64)
    luma_mean = luma.mean(axis=0)
    _, _, basis = np.linalg.svd(luma - luma_mean, full_matrices=False)
    reference = {"luma_mean": luma_mean, "components": basis[:OOD_PRINCIPAL_COMPONENTS]}
    features = ood_features(train_images, reference)
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    covariance = np.cov((features - mean) / scale, rowvar=False)
    shrink = min(1.0, 0.1 + covariance.shape[0] / len(features))
    covariance = (1 - shrink) * covariance + shrink * np.diag(np.diag(covariance))
    reference.update(mean=mean, scale=scale,
                     precision=np.linalg.inv(covariance + 1e-3 * np.eye(len(covariance))))
    np.savez(Path(model_dir) / OOD_REFERENCE_FILE, **reference)
    scores = _mahalanobis(ood_features(validation_images, reference), reference)
    threshold = float(np.quantile(scores, 1.0 - target_false_rejection))
    return {"ood_threshold": threshold, "ood_selection": {
        "method": "Mahalanobis distance of image statistics (level, contrast, gradient "
                  "energy, saturation, flat blocks, blockiness, principal-component residual) "
                  "from the training split's",
        "rule": f"the validation score {target_false_rejection:.0%} of real photos exceed",
        "target_false_rejection": target_false_rejection,
        "validation_false_rejection": float(np.mean(scores > threshold)),
        "validation_images": int(len(scores))}}


def _mahalanobis(features: np.ndarray, reference: dict) -> np.ndarray:
    delta = (features - reference["mean"]) / reference["scale"]
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", delta, reference["precision"], delta),
                              0.0))


def load_ood_reference(model_dir, config: dict) -> dict | None:
    """The artifact's reference and threshold; None for artifacts made before it existed."""
    path = Path(model_dir) / OOD_REFERENCE_FILE
    if not path.is_file() or config.get("ood_threshold") is None:
        return None
    with np.load(path, allow_pickle=False) as stored:
        reference = {key: stored[key] for key in ("luma_mean", "components", "mean", "scale",
                                                  "precision")}
    reference["threshold"] = float(config["ood_threshold"])
    return reference


def ood_scores(model: ServedModel, images_uint8_nhwc: np.ndarray) -> np.ndarray | None:
    """Out-of-distribution scores of decoded images; None when the artifact has no reference."""
    reference = getattr(model, "ood", None)
    if reference is None:
        return None
    return _mahalanobis(ood_features(images_uint8_nhwc, reference), reference)


class Prediction:
    """predict_fn's answer: the class probabilities (what np.asarray gives, so a caller that
    wants only them is unchanged) and, where the artifact has a reference, each image's
    out-of-distribution score with the version's threshold."""

    def __init__(self, probabilities: np.ndarray, ood_scores: np.ndarray | None,
                 ood_threshold: float | None):
        self.probabilities = probabilities
        self.ood_scores = ood_scores
        self.ood_threshold = ood_threshold

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.probabilities, dtype=dtype)

    def __getitem__(self, index):
        return self.probabilities[index]

    def __len__(self) -> int:
        return len(self.probabilities)


def predict_fn(input_data: np.ndarray, model: ServedModel) -> Prediction:
    """One decoded image (H x W x 3) -> its class probabilities; a batch -> N x classes
    (np.asarray of the answer); with the out-of-distribution scores beside them."""
    probabilities = predict_batch(model, input_data)
    scores = ood_scores(model, input_data)
    threshold = None if scores is None else model.ood["threshold"]
    if np.asarray(input_data).ndim == 3:
        return Prediction(probabilities[0], None if scores is None else scores[0], threshold)
    return Prediction(probabilities, scores, threshold)


def _is_verbose(accept: str | None) -> bool:
    """`application/json; verbose=true` (SageMaker's built-in algorithms' way to ask for more
    than the scores)."""
    for parameter in (accept or "").split(";")[1:]:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == VERBOSE_PARAMETER:
            return value.strip().strip('"').lower() in ("true", "1", "yes")
    return False


def output_fn(prediction, accept: str | None = JSON_CONTENT_TYPE) -> str:
    """JSON class probabilities in class order; with `verbose=true` in the accept type, an
    object {"probabilities", "ood_score", "ood_threshold"} (the score and the version's
    threshold: null for an artifact without a reference)."""
    media_type = _media_type(accept)
    if media_type not in ("", "*/*", JSON_CONTENT_TYPE):
        raise InvalidInputError(f"unsupported accept type {accept!r}: this model answers "
                                f"{JSON_CONTENT_TYPE}", 406)
    probabilities = np.asarray(prediction, dtype=float).round(6).tolist()
    if not _is_verbose(accept):
        return json.dumps(probabilities)
    scores = getattr(prediction, "ood_scores", None)
    threshold = getattr(prediction, "ood_threshold", None)
    return json.dumps({"probabilities": probabilities,
                       "ood_score": None if scores is None else np.round(
                           np.asarray(scores, dtype=float), 4).tolist(),
                       "ood_threshold": None if threshold is None else round(threshold, 4)})


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
