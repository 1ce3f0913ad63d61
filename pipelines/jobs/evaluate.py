"""Evaluate a trained model artifact on the test split, through its own serving code.

SageMaker Processing step (defaults are the container's /opt/ml/processing paths), local
runner, or by hand. Extracts model.tar.gz and loads the artifact's code/inference.py, so
the numbers describe exactly what the endpoint will serve. Self-contained (stdlib, numpy,
torch via the artifact, matplotlib): a processing job uploads this single file.

Writes <output-dir>/evaluation.json in SageMaker's model-quality layout; the pipeline's
condition reads binary_classification_metrics.accuracy.value. Our own figures live under
"custom_metrics": calibration (ECE before/after the artifact's temperature) and selective
prediction at the artifact's confidence_threshold (accuracy of the test images that pass,
and the share that passes). Also confusion_matrix.png and reliability_diagram.png.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
ECE_BINS = 15


class EvaluationError(Exception):
    """Bad input (no artifact, broken archive, wrong test data); the message says where."""


def extract_artifact(model_dir: Path, into: Path) -> Path:
    archive = model_dir / "model.tar.gz"
    if not archive.is_file():
        raise EvaluationError(f"{archive}: model artifact not found")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(into, filter="data")  # "data" refuses absolute paths and ../ escapes
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise EvaluationError(f"{archive}: not a readable model.tar.gz: {exc}") from None
    for needed in ("model.pt", "model_config.json", "code/inference.py"):
        if not (into / needed).is_file():
            raise EvaluationError(f"{archive}: the artifact has no {needed}")
    return into


def load_serving_code(code_dir: Path):
    """Import the artifact's code/inference.py as a fresh module."""
    spec = importlib.util.spec_from_file_location("artifact_inference", code_dir / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_test_split(test_dir: Path) -> dict[str, np.ndarray]:
    path = test_dir / "data.npz"
    if not path.is_file():
        raise EvaluationError(f"{path}: test split not found (expected preprocess.py's data.npz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in ("images", "labels", "class_names")}
    except (KeyError, ValueError, OSError) as exc:
        raise EvaluationError(f"{path}: not a valid split file: {exc}") from None
    if len(data["images"]) == 0 or len(data["images"]) != len(data["labels"]):
        raise EvaluationError(f"{path}: {len(data['images'])} images, {len(data['labels'])} labels")
    return data


def metric(value: float, standard_deviation: float) -> dict:
    return {"value": float(value), "standard_deviation": float(standard_deviation)}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix  # rows: actual class, columns: predicted class


def per_class_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive),
                   where=denominator > 0)
    return precision, recall, f1


def auc(y_true_binary: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney) statistic, ties averaged."""
    positives, negatives = int(y_true_binary.sum()), int(len(y_true_binary) - y_true_binary.sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=float)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over runs of equal scores
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return (ranks[y_true_binary == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)


def scores_for(y_true: np.ndarray, probabilities: np.ndarray, n_classes: int) -> dict:
    """Point estimates of every metric on one sample (used for the estimate and each bootstrap)."""
    y_pred = probabilities.argmax(axis=1)
    matrix = confusion(y_true, y_pred, n_classes)
    precision, recall, f1 = per_class_scores(matrix)
    support = matrix.sum(axis=1)
    weights = support / support.sum()
    out = {
        "accuracy": float((y_pred == y_true).mean()),
        "weighted_precision": float((precision * weights).sum()),
        "weighted_recall": float((recall * weights).sum()),
        "weighted_f1": float((f1 * weights).sum()),
        "macro_f1": float(f1.mean()),
        "precision": precision, "recall": recall, "f1": f1,
    }
    if n_classes == 2:  # the positive class is label 1 (the second class name)
        out["auc"] = auc((y_true == 1).astype(int), probabilities[:, 1])
    return out


def calibration_bins(probabilities: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS):
    """Equal-width confidence bins over [0, 1] (right-closed, the first also holds 0):
    per bin (count, mean confidence, accuracy); empty bins have count 0 and NaN means."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    return count, mean_confidence, accuracy


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    count, mean_confidence, accuracy = calibration_bins(probabilities, y_true, bins)
    filled = count > 0
    if not filled.any():
        return float("nan")
    gaps = np.abs(accuracy[filled] - mean_confidence[filled])
    return float((count[filled] * gaps).sum() / count.sum())


def selective_scores(y_true: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Accuracy of the images whose top probability is >= threshold, and the share of them
    (the filter step's rule: it passes an inference when its confidence >= threshold)."""
    passing = probabilities.max(axis=1) >= threshold
    correct = probabilities.argmax(axis=1) == y_true
    return {"selective_accuracy": float(correct[passing].mean()) if passing.any() else float("nan"),
            "coverage": float(passing.mean()), "passing_images": int(passing.sum())}


def calibration_metrics(y_true: np.ndarray, raw: np.ndarray, calibrated: np.ndarray,
                        model_config: dict) -> dict:
    """The "custom_metrics" section: ECE before/after calibration and selective prediction at
    the artifact's own threshold, each with a bootstrap standard deviation like the rest."""
    threshold = model_config.get("confidence_threshold")
    selection = model_config.get("threshold_selection", {})
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    samples = [rng.integers(0, len(y_true), len(y_true)) for _ in range(BOOTSTRAP_SAMPLES)]

    def bootstrap(fn) -> dict:
        values = np.array([fn(idx) for idx in samples], dtype=float)
        values = values[~np.isnan(values)]
        return metric(fn(np.arange(len(y_true))), values.std() if len(values) else float("nan"))

    count, mean_confidence, accuracy = calibration_bins(calibrated, y_true)
    section = {
        "calibration": {
            "temperature": float(model_config.get("temperature", 1.0)),
            "ece_bins": ECE_BINS,
            "ece_before_calibration": bootstrap(lambda i: expected_calibration_error(raw[i], y_true[i])),
            "ece_after_calibration": bootstrap(
                lambda i: expected_calibration_error(calibrated[i], y_true[i])),
            # The diagram's numbers (after calibration), so several evaluations can be pooled;
            # null where a bin is empty (NaN is not JSON).
            "reliability_after_calibration": {
                "bin_upper_edges": [round((b + 1) / ECE_BINS, 6) for b in range(ECE_BINS)],
                "count": [int(c) for c in count],
                "mean_confidence": [None if c == 0 else float(m) for c, m in zip(count, mean_confidence)],
                "accuracy": [None if c == 0 else float(a) for c, a in zip(count, accuracy)],
            },
        },
    }
    if threshold is None:  # an artifact from before thresholds were chosen per version
        section["selective_prediction"] = {"confidence_threshold": None}
        return section
    threshold = float(threshold)
    estimate = selective_scores(y_true, calibrated, threshold)
    section["selective_prediction"] = {
        "confidence_threshold": threshold,
        "threshold_source": "model_config.json confidence_threshold (chosen on validation by train.py)",
        "target_precision": selection.get("target_precision"),
        "selective_accuracy": bootstrap(
            lambda i: selective_scores(y_true[i], calibrated[i], threshold)["selective_accuracy"]),
        "coverage": bootstrap(lambda i: selective_scores(y_true[i], calibrated[i], threshold)["coverage"]),
        "passing_images": estimate["passing_images"],
        "test_images": int(len(y_true)),
    }
    return section


def compute_metrics(y_true: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict:
    n_classes = len(class_names)
    estimate = scores_for(y_true, probabilities, n_classes)
    # Standard deviations from a seeded bootstrap over the test images.
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    samples = [scores_for(y_true[idx], probabilities[idx], n_classes)
               for idx in (rng.integers(0, len(y_true), len(y_true)) for _ in range(BOOTSTRAP_SAMPLES))]

    def std(key, index=None):
        values = np.array([s[key] if index is None else s[key][index] for s in samples], dtype=float)
        values = values[~np.isnan(values)]
        return float(values.std()) if len(values) else float("nan")

    matrix = confusion(y_true, probabilities.argmax(axis=1), n_classes)
    multiclass = {
        "accuracy": metric(estimate["accuracy"], std("accuracy")),
        "weighted_precision": metric(estimate["weighted_precision"], std("weighted_precision")),
        "weighted_recall": metric(estimate["weighted_recall"], std("weighted_recall")),
        "weighted_f1": metric(estimate["weighted_f1"], std("weighted_f1")),
        "macro_f1": metric(estimate["macro_f1"], std("macro_f1")),
        "per_class": {
            name: {
                "precision": metric(estimate["precision"][i], std("precision", i)),
                "recall": metric(estimate["recall"][i], std("recall", i)),
                "f1": metric(estimate["f1"][i], std("f1", i)),
                "support": int(matrix[i].sum()),
            } for i, name in enumerate(class_names)
        },
        # actual class name -> predicted class name -> count
        "confusion_matrix": {actual: {predicted: int(matrix[i, j]) for j, predicted in enumerate(class_names)}
                             for i, actual in enumerate(class_names)},
    }
    result = {"multiclass_classification_metrics": multiclass}
    if n_classes == 2:
        positive = 1
        result["binary_classification_metrics"] = {
            "accuracy": metric(estimate["accuracy"], std("accuracy")),
            "precision": metric(estimate["precision"][positive], std("precision", positive)),
            "recall": metric(estimate["recall"][positive], std("recall", positive)),
            "f1": metric(estimate["f1"][positive], std("f1", positive)),
            "auc": metric(estimate["auc"], std("auc")),
            # actual label -> predicted label -> count, as SageMaker's model-quality report keys it
            "confusion_matrix": {str(i): {str(j): int(matrix[i, j]) for j in range(2)} for i in range(2)},
            "positive_class": class_names[positive],
        }
    return result


def plot_confusion(matrix: np.ndarray, class_names: list[str], accuracy: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"test accuracy {accuracy:.3f} (n={int(matrix.sum())})")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in ticks:
        for j in ticks:
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(y_true: np.ndarray, raw: np.ndarray, calibrated: np.ndarray,
                     temperature: float, threshold: float | None, path: Path) -> None:
    """Reliability diagram: accuracy vs confidence per bin before and after calibration (the
    diagonal is perfect calibration), with the image count per bin underneath."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_classes = raw.shape[1]
    edges = np.linspace(0, 1, ECE_BINS + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1 / ECE_BINS
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(6.5, 7), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1.2]})
    series = (("before (T=1)", raw, "tab:gray", -0.2), (f"after (T={temperature:.2f})", calibrated,
                                                         "tab:blue", 0.2))
    for label, probabilities, colour, shift in series:
        count, mean_confidence, accuracy = calibration_bins(probabilities, y_true)
        ece = expected_calibration_error(probabilities, y_true)
        filled = count > 0
        ax.bar(centres[filled] + shift * width, accuracy[filled], width=0.4 * width, color=colour,
               label=f"{label}: ECE {ece:.3f}")
        ax.plot(mean_confidence[filled], accuracy[filled], "o", color=colour, markersize=4)
        ax_count.bar(centres + shift * width, count, width=0.4 * width, color=colour)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for axis in (ax, ax_count):
        if threshold is not None:
            axis.axvline(threshold, color="tab:red", linewidth=1.2,
                         label=f"threshold {threshold:.3f} (images at or right of it pass)")
        axis.grid(alpha=0.3)
    low = 1 / n_classes - width  # a top-class probability is never below 1 / classes
    ax.set_xlim(max(0.0, low), 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy in bin (bars) at mean confidence (dots)")
    ax.set_title(f"reliability on the test split (n={len(y_true)}, {ECE_BINS} bins)", pad=48)
    # Above the axes: inside, it would hide the bars of a well-calibrated model.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=2, fontsize=8, frameon=False)
    ax_count.set_xlabel("confidence (top class probability)")
    ax_count.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def ood_metrics(scores, model_config: dict) -> dict:
    """The "not a vehicle" threshold train.py chose on validation, and the share of the test
    split's real photos it would refuse. "none" (a string, so the pipeline's JsonGet always
    finds a value) for an artifact without an out-of-distribution reference."""
    threshold = model_config.get("ood_threshold")
    if scores is None or threshold is None:
        return {"ood_threshold": "none", "test_false_rejection": None}
    scores = np.asarray(scores, dtype=float)
    return {"ood_threshold": round(float(threshold), 4),
            "threshold_source": "model_config.json ood_threshold (chosen on validation by "
                                "train.py for its target false rejection)",
            "target_false_rejection": (model_config.get("ood_selection") or {}).get(
                "target_false_rejection"),
            "test_false_rejection": round(float(np.mean(scores > threshold)), 4),
            "test_images": int(len(scores))}


def run(model_dir: Path, test_dir: Path, output_dir: Path) -> dict:
    test = load_test_split(test_dir)
    with tempfile.TemporaryDirectory(prefix="scones-model-") as tmp:
        artifact = extract_artifact(model_dir, Path(tmp))
        serving = load_serving_code(artifact / "code")
        model = serving.model_fn(str(artifact))
        class_names = list(model.class_names)
        test_classes = [str(c) for c in test["class_names"]]
        if test_classes != class_names:
            raise EvaluationError(f"the model's classes {class_names} differ from the test "
                                  f"split's {test_classes}")
        model_config = dict(getattr(model, "config", {}))
        if hasattr(serving, "tta_logits"):
            logits = serving.tta_logits(model, test["images"])
            raw = serving.probabilities_from_logits(logits, 1.0)
            probabilities = serving.predict_batch(model, test["images"])  # what is served
        else:  # an artifact from before calibration: served probabilities are the raw ones
            raw = probabilities = serving.predict_batch(model, test["images"])
        ood = (serving.ood_scores(model, test["images"]) if hasattr(serving, "ood_scores")
               else None)
    y_true = test["labels"].astype(np.int64)
    result = compute_metrics(y_true, probabilities, class_names)
    result["custom_metrics"] = calibration_metrics(y_true, raw, probabilities, model_config)
    result["custom_metrics"]["out_of_distribution"] = ood_metrics(ood, model_config)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp_path = output_dir / "evaluation.json.tmp"
    tmp_path.write_text(json.dumps(result, indent=2))
    tmp_path.replace(output_dir / "evaluation.json")
    accuracy = result["multiclass_classification_metrics"]["accuracy"]["value"]
    plot_confusion(confusion(y_true, probabilities.argmax(axis=1), len(class_names)), class_names,
                   accuracy, output_dir / "confusion_matrix.png")
    plot_reliability(y_true, raw, probabilities, result["custom_metrics"]["calibration"]["temperature"],
                     result["custom_metrics"]["selective_prediction"]["confidence_threshold"],
                     output_dir / "reliability_diagram.png")
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--model-dir", type=Path, default=Path("/opt/ml/processing/model"),
                        help="folder holding model.tar.gz")
    parser.add_argument("--test-dir", type=Path, default=Path("/opt/ml/processing/test"),
                        help="folder holding the test split's data.npz")
    parser.add_argument("--output-dir", type=Path, default=Path("/opt/ml/processing/evaluation"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args.model_dir, args.test_dir, args.output_dir)
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    accuracy = result["multiclass_classification_metrics"]["accuracy"]
    n = sum(c["support"] for c in result["multiclass_classification_metrics"]["per_class"].values())
    print(f"evaluate: test accuracy={accuracy['value']:.4f} "
          f"(+/- {accuracy['standard_deviation']:.4f}, n={n})")
    custom = result["custom_metrics"]
    calibration, selective = custom["calibration"], custom["selective_prediction"]
    line = (f"evaluate: ECE {calibration['ece_before_calibration']['value']:.4f} before, "
            f"{calibration['ece_after_calibration']['value']:.4f} after calibration "
            f"(T={calibration['temperature']:.3f})")
    if selective["confidence_threshold"] is not None:
        line += (f"; at threshold {selective['confidence_threshold']:.4f}: "
                 f"{selective['coverage']['value']:.1%} pass, "
                 f"selective accuracy={selective['selective_accuracy']['value']:.4f}")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
