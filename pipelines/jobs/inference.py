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
With `Accept: application/json; verbose=true` (what the workflow's classify Lambda sends),
one image's response is {"probabilities": [...], "ood_score": s, "ood_threshold": t}: the
picture's out-of-distribution score and the version's threshold (see "not a vehicle"
below; null for an artifact without a reference).

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
import functools
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
# Images per forward pass (each goes through with its mirror: twice as many views). Chunks
# this small keep a layer's activations in cache: 64 answered 1.3x the images per second of
# 256 on one core of the 2-core box, and more than 32 or 128.
FORWARD_CHUNK = 64
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
        # BatchNorm folded into the convolutions: train.py calibrates through this same
        # object, so the temperature and threshold are fitted on exactly what is served.
        self.net = net.for_inference()
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
    served = ServedModel(net, config, device, scones_net)
    served.ood = load_ood_reference(model_dir, config)
    return served


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
        for start in range(0, len(images), FORWARD_CHUNK):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + FORWARD_CHUNK]))
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
BLOCK_GRID_PERIODS = (4, 8, 16)


def _colour_planes(images_uint8_nhwc: np.ndarray) -> np.ndarray:
    """N x H x W x 3 uint8 (or one H x W x 3) -> float32 3 x N x H x W in [0, 1].

    Colour planes, not pixels: numpy reduces over a last axis of 3 several times slower
    than it combines three planes (the statistics were a fifth of a served batch's time)."""
    images = np.asarray(images_uint8_nhwc)
    images = images[None] if images.ndim == 3 else images
    return np.ascontiguousarray(images.transpose(3, 0, 1, 2),
                                dtype=np.float32) * np.float32(1 / 255.0)


def _luma(planes: np.ndarray) -> np.ndarray:
    """3 x N x H x W colour planes -> N x H x W luma."""
    red, green, blue = planes
    return _LUMA_WEIGHTS[0] * red + _LUMA_WEIGHTS[1] * green + _LUMA_WEIGHTS[2] * blue


def image_statistics(images_uint8_nhwc: np.ndarray) -> np.ndarray:
    """N x 32 x 32 x 3 uint8 -> N x 9: luma mean and std, gradient energy at full and half
    resolution (log), saturation mean and std, colour spread, share of flat 4 x 4 blocks,
    blockiness (log ratio of the gradient on a 4/8/16-pixel grid to the gradient off it)."""
    planes = _colour_planes(images_uint8_nhwc)
    return _statistics(planes, _luma(planes))


def _statistics(planes: np.ndarray, luma: np.ndarray) -> np.ndarray:
    """image_statistics of images already split into planes and luma."""
    n, h, w = luma.shape
    red, green, blue = planes
    across = np.abs(np.diff(luma, axis=2)).mean(axis=1)   # N x (w-1): column to column
    down = np.abs(np.diff(luma, axis=1)).mean(axis=2)     # N x (h-1): row to row
    half = luma.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    half_gradient = (np.abs(np.diff(half, axis=1)).mean(axis=(1, 2))
                     + np.abs(np.diff(half, axis=2)).mean(axis=(1, 2)))
    blocks = luma.reshape(n, h // 4, 4, w // 4, 4).std(axis=(2, 4))
    saturation = (np.maximum(np.maximum(red, green), blue)
                  - np.minimum(np.minimum(red, green), blue)).reshape(n, -1)
    colour_spread = planes.reshape(3, n, -1).std(axis=2).mean(axis=0)
    # Every mean over grid columns at once: column means of the gradient, then one product
    # with the weights of each period's on-grid and off-grid columns (and of all columns).
    across_means = across @ _grid_weights(w - 1)   # N x (2 x periods + 1)
    down_means = down @ _grid_weights(h - 1)
    logs = np.log(across_means + 1e-3) + np.log(down_means + 1e-3)
    flat_luma = luma.reshape(n, -1)
    return np.stack([flat_luma.mean(axis=1), flat_luma.std(axis=1),
                     np.log(across_means[:, -1] + down_means[:, -1] + 1e-3),
                     np.log(half_gradient + 1e-3),
                     saturation.mean(axis=1), saturation.std(axis=1),
                     colour_spread, (blocks < 0.01).reshape(n, -1).mean(axis=1),
                     (logs[:, 0:-1:2] - logs[:, 1:-1:2]).max(axis=1)], axis=1)


@functools.lru_cache(maxsize=4)
def _grid_weights(length: int) -> np.ndarray:
    """length x (2 x periods + 1) weights: for each grid period, the mean over the columns
    on the grid (every period-th) and over those off it; last, the mean over all."""
    columns = []
    for period in BLOCK_GRID_PERIODS:
        on = (np.arange(length) % period) == period - 1
        columns += [on / on.sum(), ~on / (~on).sum()]
    columns.append(np.full(length, 1.0 / length))
    weights = np.stack(columns, axis=1).astype(np.float32)
    weights.setflags(write=False)  # shared by every call (cached)
    return weights


def ood_features(images_uint8_nhwc: np.ndarray, reference: dict) -> np.ndarray:
    """N x 11: image_statistics plus the luma's distance from the training pictures'
    principal components (log residual energy, absolute and relative)."""
    planes = _colour_planes(images_uint8_nhwc)
    luma = _luma(planes)
    centred = luma.reshape(len(luma), -1) - reference["luma_mean"]
    components = reference["components"]
    residual = centred - (centred @ components.T) @ components
    energy = np.log((residual ** 2).mean(axis=1) + 1e-6)
    relative = energy - np.log((centred ** 2).mean(axis=1) + 1e-6)
    return np.concatenate([_statistics(planes, luma).astype(np.float64),
                           energy[:, None], relative[:, None]], axis=1)


def fit_out_of_distribution(model, train_images: np.ndarray, validation_images: np.ndarray,
                            model_dir,
                            target_false_rejection: float = OOD_TARGET_FALSE_REJECTION) -> dict:
    """Fit the reference on the training pictures (written to model_dir/ood_reference.npz)
    and choose the threshold on validation; returns the keys for model_config.json. `model`
    is unused (the description is of the image): kept so the call reads as the others."""
    luma = _luma(_colour_planes(train_images)).reshape(len(train_images), -1).astype(np.float64)
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


def predict_fn(input_data, model: ServedModel):
    """One decoded image (H x W x 3) -> its class probabilities; a stack -> N x classes
    (np.asarray of the answer), with the out-of-distribution scores beside them; an
    ImageBatch -> a BatchPrediction (all its decoded images predicted at once)."""
    if isinstance(input_data, ImageBatch):
        prediction = BatchPrediction(predict_batch(model, input_data.images), input_data)
        scores = ood_scores(model, input_data.images) if len(input_data.images) else None
        prediction.ood_scores = scores
        prediction.ood_threshold = None if scores is None else model.ood["threshold"]
        return prediction
    probabilities = predict_batch(model, input_data)
    scores = ood_scores(model, input_data)
    threshold = None if scores is None else model.ood["threshold"]
    if np.asarray(input_data).ndim == 3:
        return Prediction(probabilities[0], None if scores is None else scores[0], threshold)
    return Prediction(probabilities, scores, threshold)


def image_answer(probabilities, ood_score=None, ood_threshold=None, verbose: bool = False):
    """What one image's answer holds: its class probabilities in class order, rounded; the
    verbose answer adds its out-of-distribution score and the version's threshold."""
    rounded = np.asarray(probabilities, dtype=float).round(6).tolist()
    if not verbose:
        return rounded
    return {"probabilities": rounded,
            "ood_score": None if ood_score is None else np.round(
                np.asarray(ood_score, dtype=float), 4).tolist(),
            "ood_threshold": None if ood_threshold is None else round(float(ood_threshold), 4)}


def batch_answer(prediction: BatchPrediction, verbose: bool = False) -> dict:
    """{"predictions": [one image's answer | {"error", "status"}, ...]} in request order."""
    answers: list = [None] * prediction.batch.size
    for position, refusal in prediction.batch.refused.items():
        answers[position] = {"error": refusal.message, "status": refusal.status_code}
    scores = getattr(prediction, "ood_scores", None)
    if scores is None:
        scores = [None] * len(prediction.batch.positions)
    for position, row, score in zip(prediction.batch.positions, prediction.probabilities,
                                    scores):
        answers[position] = image_answer(row, score, getattr(prediction, "ood_threshold", None),
                                         verbose)
    return {"predictions": answers}


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
    verbose = _is_verbose(accept)
    if isinstance(prediction, BatchPrediction):
        return json.dumps(batch_answer(prediction, verbose), separators=(",", ":"))
    return json.dumps(image_answer(prediction, getattr(prediction, "ood_scores", None),
                                   getattr(prediction, "ood_threshold", None), verbose))


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
