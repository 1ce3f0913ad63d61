"""What the monitor watches, per image, and its baselines in SageMaker Model Monitor's formats.

Self-contained (standard library, numpy, Pillow): the baseline processing job
(pipelines/jobs/baseline.py) ships this one file next to itself, and the monitor imports it
from the package, so the baseline and the check compute every feature with the same code.

One representation on both sides: the decoded image as the model sees it. The baseline
profiles the held-out split as preprocess.py decoded it (RGB, 32 x 32); the monitor decodes
each captured request with the serving decoder's policy (decode_for_model: colour mode to
RGB, JPEG DCT-reduced, integer box pre-reduction, Lanczos to 32 x 32) before profiling it. So
an RGBA PNG, a JPEG and a 4000 x 3000 photo of one picture give the same features as the
picture did in training, and nothing about the request's container (its colour mode, its
pixel size) can raise a drift alarm on ordinary traffic: those are not what the model sees.

Features of one invocation (all of the decoded 32 x 32 RGB image, except the last two):
    brightness, contrast   mean and standard deviation of luma (0..1)
    colourfulness          Hasler and Suesstrunk's colourfulness metric, scaled to 0..1
    ood_score              Mahalanobis distance of a cheap 21-number description of the image
                           (4 x 4 luma grid, channel means, contrast, colourfulness) from the
                           baseline images: large for images unlike anything seen in training
    confidence             the top class probability the endpoint answered
    predicted_label        the class it picked

statistics.json and constraints.json follow Model Monitor's data-quality layout; the KLL
"sketch" holds the baseline's sorted values (a few hundred), so the drift distance is the
exact two-sample Kolmogorov-Smirnov statistic. ood_reference.json holds the Mahalanobis
reference (mean and inverse covariance) next to them.
"""
from __future__ import annotations

import io
import json
import math
from typing import Iterable, Sequence

import numpy as np

IMAGE_SIZE = 32
NUMERIC_FEATURES = ("brightness", "contrast", "colourfulness", "ood_score", "confidence")
STRING_FEATURES = ("predicted_label",)
FEATURES = NUMERIC_FEATURES + STRING_FEATURES
HISTOGRAM_BUCKETS = 10
STATISTICS_FILE, CONSTRAINTS_FILE, OOD_FILE = ("statistics.json", "constraints.json",
                                               "ood_reference.json")
_LUMA = np.array([0.299, 0.587, 0.114])


class ProfileError(ValueError):
    """An image that cannot be decoded, or a baseline file that is not what it should be."""


# The serving decoder's policy (pipelines/jobs/inference.py decode_image, which preprocess.py
# shares): tests/workflow/test_monitoring.py checks that both give the same pixels.
MAX_DECODED_PIXELS = 80_000_000
REDUCE_TO_MULTIPLE = 4


def decode_for_model(data: bytes) -> tuple[np.ndarray, int, int, str]:
    """Image bytes -> (uint8 32 x 32 x 3 RGB exactly as the model sees it, and the request's
    width, height and colour mode, for the report only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
            width, height, mode = image.width, image.height, image.mode
            if width * height > MAX_DECODED_PIXELS:
                raise ProfileError(f"image is {width}x{height}, over the serving limits")
            if image.format in ("JPEG", "MPO") and (width, height) != (IMAGE_SIZE, IMAGE_SIZE):
                image.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))  # JPEG: DCT-reduced, as served
            image.load()
            if image.mode not in ("RGB", "RGBA", "L", "LA") or "transparency" in image.info:
                image = image.convert("RGBA") if "transparency" in image.info else image
                image = image.convert("RGB")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                factors = tuple(max(1, side // (IMAGE_SIZE * REDUCE_TO_MULTIPLE))
                                for side in image.size)
                if factors != (1, 1):
                    image = image.reduce(factors)
                image = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE),
                                                    Image.Resampling.LANCZOS)
            elif image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8).copy(), width, height, mode
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as exc:
        if isinstance(exc, ProfileError):
            raise
        raise ProfileError(f"not a readable image ({len(data)} bytes): {exc}") from None


def describe(image: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 -> the 21-number vector the OOD score is measured on."""
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    luma = rgb @ _LUMA
    h, w = luma.shape
    grid = luma[: h - h % 4, : w - w % 4].reshape(4, h // 4, 4, w // 4).mean(axis=(1, 3))
    return np.concatenate([grid.ravel(), rgb.reshape(-1, 3).mean(axis=0),
                           [luma.std(), colourfulness(rgb)]])


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) on 0..1 RGB: about 0 for grey images, 0.3+ for vivid."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def fit_ood_reference(vectors: np.ndarray) -> dict:
    """Mean and (ridge-regularised) inverse covariance of the baseline's description vectors."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if len(vectors) < 2:
        raise ProfileError("the OOD reference needs at least two baseline images")
    mean = vectors.mean(axis=0)
    covariance = np.cov(vectors, rowvar=False)
    # Shrink towards the diagonal as the sample gets small against the 21 dimensions: a
    # test split of 8 images must not give a near-singular matrix and absurd distances.
    shrink = min(1.0, covariance.shape[0] / len(vectors))
    covariance = (1 - shrink) * covariance + shrink * np.diag(np.diag(covariance))
    ridge = 1e-3 * float(np.trace(covariance)) / covariance.shape[0] + 1e-9
    inverse = np.linalg.inv(covariance + ridge * np.eye(covariance.shape[0]))
    return {"method": "mahalanobis", "mean": mean.tolist(), "inverse_covariance": inverse.tolist()}


def ood_scores(vectors: np.ndarray, reference: dict) -> np.ndarray:
    mean = np.asarray(reference["mean"], dtype=np.float64)
    inverse = np.asarray(reference["inverse_covariance"], dtype=np.float64)
    delta = np.atleast_2d(np.asarray(vectors, dtype=np.float64)) - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", delta, inverse, delta), 0.0))


def cross_fitted_ood_scores(vectors: np.ndarray, folds: int = 5) -> np.ndarray:
    """Each baseline image's OOD score under a reference fitted without it (k-fold): scored
    in-sample, the baseline would look more typical than new traffic of the same kind."""
    vectors = np.asarray(vectors, dtype=np.float64)
    order = np.random.default_rng(0).permutation(len(vectors))
    scores = np.empty(len(vectors))
    for held_out in np.array_split(order, min(folds, len(vectors))):
        rest = np.setdiff1d(order, held_out)
        scores[held_out] = ood_scores(vectors[held_out], fit_ood_reference(vectors[rest]))
    return scores


def image_rows(images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int, str]] | None,
               probabilities: np.ndarray, class_names: Sequence[str],
               reference: dict, scores: Sequence[float] | None = None) -> list[dict]:
    """One row of all FEATURES per decoded image. sizes: unused (the request's own width,
    height and mode are not what the model sees; kept for callers); scores: OOD scores when
    already known (the baseline's cross-fitted ones)."""
    vectors = np.array([describe(image) for image in images]) if len(images) else np.zeros((0, 21))
    if scores is None:
        scores = ood_scores(vectors, reference) if len(images) else []
    rows = []
    for vector, score, probs in zip(vectors, scores, probabilities):
        probs = np.asarray(probs, dtype=np.float64)
        rows.append({"brightness": float(vector[16:19] @ _LUMA), "contrast": float(vector[19]),
                     "colourfulness": float(vector[20]), "ood_score": float(score),
                     "confidence": float(probs.max()),
                     "predicted_label": str(class_names[int(probs.argmax())])})
    return rows


# --- Model Monitor formats ----------------------------------------------------------------

def statistics(rows: list[dict]) -> dict:
    """statistics.json (Model Monitor data-quality layout) of feature rows."""
    features = []
    for name in NUMERIC_FEATURES:
        values = np.sort(np.array([row[name] for row in rows], dtype=np.float64))
        low, high = float(values.min()), float(values.max())
        edges = np.linspace(low, high if high > low else low + 1e-9, HISTOGRAM_BUCKETS + 1)
        counts, _ = np.histogram(values, bins=edges)
        features.append({
            "name": name, "inferred_type": "Fractional",
            "numerical_statistics": {
                "common": {"num_present": len(values), "num_missing": 0},
                "mean": float(values.mean()), "sum": float(values.sum()),
                "std_dev": float(values.std()), "min": low, "max": high,
                "distribution": {"kll": {
                    "buckets": [{"lower_bound": float(a), "upper_bound": float(b),
                                 "count": float(c)} for a, b, c in zip(edges, edges[1:], counts)],
                    "sketch": {"parameters": {"c": 0.64, "k": 2048.0},
                               "data": [[round(float(v), 6) for v in values]]}}},
            }})
    for name in STRING_FEATURES:
        counts: dict[str, int] = {}
        for row in rows:
            counts[row[name]] = counts.get(row[name], 0) + 1
        features.append({
            "name": name, "inferred_type": "String",
            "string_statistics": {
                "common": {"num_present": len(rows), "num_missing": 0},
                "distinct_count": float(len(counts)),
                "distribution": {"categorical": {"buckets": [
                    {"value": value, "count": count} for value, count in sorted(counts.items())]}},
            }})
    return {"version": 0.0, "dataset": {"item_count": len(rows)}, "features": features}


def constraints(stats: dict, comparison_threshold: float = 0.2) -> dict:
    """constraints.json suggested from statistics.json, as Model Monitor's baselining job does."""
    features = []
    for feature in stats["features"]:
        if feature["inferred_type"] == "String":
            domain = [b["value"] for b in
                      feature["string_statistics"]["distribution"]["categorical"]["buckets"]]
            features.append({"name": feature["name"], "inferred_type": "String",
                             "completeness": 1.0, "string_constraints": {"domains": domain}})
        else:
            features.append({"name": feature["name"], "inferred_type": "Fractional",
                             "completeness": 1.0, "num_constraints": {
                                 "is_non_negative": feature["numerical_statistics"]["min"] >= 0}})
    return {"version": 0.0, "features": features, "monitoring_config": {
        "evaluate_constraints": "Enabled", "emit_metrics": "Enabled",
        "datatype_check_threshold": 1.0, "domain_content_threshold": 1.0,
        "distribution_constraints": {
            "perform_comparison": "Enabled", "comparison_threshold": comparison_threshold,
            "comparison_method": "Robust",
            "categorical_comparison_threshold": comparison_threshold,
            "categorical_drift_method": "LInfinity"}}}


def baseline_values(stats: dict, name: str) -> np.ndarray | dict[str, float]:
    """The baseline sample of a numeric feature, or the shares of a string feature's values."""
    for feature in stats.get("features", []):
        if feature.get("name") != name:
            continue
        if "numerical_statistics" in feature:
            data = feature["numerical_statistics"]["distribution"]["kll"]["sketch"]["data"]
            return np.sort(np.array([v for chunk in data for v in chunk], dtype=np.float64))
        buckets = feature["string_statistics"]["distribution"]["categorical"]["buckets"]
        total = sum(b["count"] for b in buckets) or 1
        return {b["value"]: b["count"] / total for b in buckets}
    raise ProfileError(f"statistics.json has no feature {name!r}")


def ks_distance(baseline: np.ndarray, values: Iterable[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two CDFs."""
    a = np.sort(np.asarray(baseline, dtype=np.float64))
    b = np.sort(np.asarray(list(values), dtype=np.float64))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def linf_distance(baseline_shares: dict[str, float], values: Iterable[str]) -> float:
    """L-infinity distance between two categorical distributions (Model Monitor's LInfinity)."""
    values = list(values)
    shares = {v: values.count(v) / len(values) for v in set(values)}
    return float(max(abs(shares.get(k, 0.0) - baseline_shares.get(k, 0.0))
                     for k in set(shares) | set(baseline_shares)))


def significance_threshold(n_baseline: int, n: int, confidence: float) -> float:
    """The distance a sample this small reaches by chance at `confidence` (the KS critical
    value c(alpha) * sqrt((n + m) / (n m))); a drift threshold below it would alarm on noise."""
    alpha = 1.0 - confidence
    c_alpha = math.sqrt(-math.log(alpha / 2) / 2)
    return c_alpha * math.sqrt((n_baseline + n) / (n_baseline * n))


def write_json(path, document: dict) -> None:
    """Whole file or nothing."""
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)
