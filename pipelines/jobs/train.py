"""Train SconesNet from scratch on preprocess.py's splits.

SageMaker training entry point (source_dir = this folder): hyperparameters arrive as
`--epochs 30`-style arguments, channels and output folders through the SM_* variables,
which is SageMaker's convention. Runs by hand and under the local runner the same way.

One line per epoch, parsed by the pipeline's metric_definitions:
  epoch 3/30 train_loss=0.4123 train_accuracy=0.8125 validation_loss=0.3912 validation_accuracy=0.8400 seconds=1.2

Model dir: model.pt (the state_dict of the weight average after the last epoch), model_config.json,
code/inference.py + code/scones_net.py (the serving code, next to the weights it serves).
Output-data dir: training_history.json, training_curves.png (the kept epoch marked).

After training, on the validation split and through the serving code's prediction path:
a temperature is fitted (model_config.json "temperature", applied by inference.py to every
answer), then the lowest confidence threshold whose passing images reach --target-precision
is chosen ("confidence_threshold", with "threshold_selection" saying how it was found), so
each model version carries the threshold that means what it says for that version.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import inference
import scones_net
from evaluate import expected_calibration_error
from scones_net import ARCHITECTURE, IMAGE_SIZE, SconesNet, normalise

HERE = Path(__file__).resolve().parent
SERVING_CODE = ("inference.py", "image_decoding.py", "scones_net.py")
CROP_PADDING = 4
MIN_ONE_CYCLE_STEPS = 8  # fewer optimiser steps than this: no room for warm-up + anneal
# The threshold is chosen only where at least this many validation images pass: below it one
# lucky image moves the measured precision by 5 points or more.
MIN_PASSING_FOR_THRESHOLD = 20
TEMPERATURE_RANGE = (0.05, 20.0)


class TrainingError(Exception):
    """Bad input (missing channel, wrong arrays); the message says what and where."""


def load_split(folder: Path, channel: str) -> dict[str, np.ndarray]:
    path = folder / "data.npz"
    if not path.is_file():
        raise TrainingError(f"{channel} channel: {path} not found (expected preprocess.py's data.npz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in ("images", "labels", "class_names")}
    except (KeyError, ValueError, OSError) as exc:
        raise TrainingError(f"{channel} channel: {path} is not a valid split file: {exc}") from None
    images, labels = data["images"], data["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise TrainingError(f"{path}: images must be uint8 N x {IMAGE_SIZE} x {IMAGE_SIZE} x 3, "
                            f"got {images.dtype} {images.shape}")
    if len(labels) != len(images) or len(images) == 0:
        raise TrainingError(f"{path}: {len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= len(data["class_names"]):
        raise TrainingError(f"{path}: labels outside 0..{len(data['class_names']) - 1}")
    return data


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with reflect padding + horizontal flip + brightness/contrast jitter.

    batch: normalised float N x 3 x H x W. Vectorised with gather-free indexing so it costs
    far less than the forward pass.
    """
    n, _, h, w = batch.shape
    padded = F.pad(batch, (CROP_PADDING,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]          # n,1,h,1
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]          # n,1,1,w
    index_n = torch.arange(n)[:, None, None, None]
    index_c = torch.arange(batch.shape[1])[None, :, None, None]
    out = padded[index_n, index_c, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(3), out)
    # Light photometric jitter, in normalised units: contrast x[0.8,1.2], brightness +-0.2.
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)
    brightness = 0.4 * torch.rand(n, 1, 1, 1, generator=generator) - 0.2
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean + brightness
    return out.contiguous(memory_format=torch.channels_last)


def cutmix(images: torch.Tensor, partners: torch.Tensor, lam: float,
           generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Paste a box covering about 1 - lam of the image from `partners` into `images` (one box
    position for the whole batch); returns the mixed batch and the exact share of the
    original image left, which weights its label."""
    _, _, h, w = images.shape
    cut = math.sqrt(1.0 - lam)
    box_h, box_w = int(round(h * cut)), int(round(w * cut))
    top = int(torch.randint(0, h - box_h + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - box_w + 1, (1,), generator=generator))
    mixed = images.clone()
    mixed[:, :, top:top + box_h, left:left + box_w] = partners[:, :, top:top + box_h, left:left + box_w]
    return mixed, 1.0 - box_h * box_w / (h * w)


def evaluate(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    net.eval()
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            logits = net(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
    return loss_sum / len(x), correct / len(x)


@torch.no_grad()
def update_average(averaged: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """averaged <- decay * averaged + (1 - decay) * net, for weights and float buffers
    (BatchNorm running statistics) alike; integer buffers are copied."""
    for average, current in zip(averaged.state_dict().values(), net.state_dict().values()):
        if average.is_floating_point():
            average.lerp_(current, 1.0 - decay)
        else:
            average.copy_(current)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probabilities = inference.probabilities_from_logits(logits, temperature)
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising validation NLL of the served probabilities.

    A 1-D search over log T: a coarse grid, then golden-section refinement around the best
    grid point. Exact for what is served (mean of softmax(logits/T) over the image and its
    mirror), which LBFGS on a single softmax would not be, and cheap: one evaluation is a
    softmax over ~100 x 2 x 2 numbers.
    """
    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    grid = np.linspace(low, high, 61)
    losses = [negative_log_likelihood(logits, labels, float(np.exp(g))) for g in grid]
    best = int(np.argmin(losses))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if negative_log_likelihood(logits, labels, float(np.exp(c))) <= \
                negative_log_likelihood(logits, labels, float(np.exp(d))):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target_precision: float,
                     min_passing: int = MIN_PASSING_FOR_THRESHOLD) -> dict:
    """The lowest confidence threshold at which the images passing (confidence >= threshold)
    are at least `target_precision` right, with at least `min_passing` of them passing.

    The threshold sits midway between the last passing confidence and the next lower one, so
    rounding the served probabilities (6 decimals) cannot move an image across it.
    Fallback when no such threshold exists (a weak model, or fewer than `min_passing`
    images): the threshold with the highest validation precision among those passing at
    least `min_passing` images (all of them if fewer), the lowest of them on a tie; it says
    so with target_met=false.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(confidence)
    if n == 0:
        raise TrainingError("cannot choose a confidence threshold from 0 validation images")
    order = np.argsort(-confidence, kind="mergesort")
    sorted_confidence, sorted_correct = confidence[order], correct[order]
    precision = np.cumsum(sorted_correct) / np.arange(1, n + 1)
    # k images pass only where the k-th and (k+1)-th confidences differ (ties pass together).
    boundary = np.append(sorted_confidence[:-1] > sorted_confidence[1:], True)
    passing_counts = np.arange(1, n + 1)
    eligible = boundary & (passing_counts >= min_passing) & (precision >= target_precision)
    if eligible.any():
        k = int(passing_counts[eligible].max())
        target_met = True
    else:
        candidates = np.flatnonzero(boundary & (passing_counts >= min(min_passing, n)))
        best_precision = precision[candidates].max()
        k = int(passing_counts[candidates[precision[candidates] == best_precision]].max())
        target_met = False
    lowest_passing = sorted_confidence[k - 1]
    threshold = lowest_passing if k == n else (lowest_passing + sorted_confidence[k]) / 2
    return {
        "confidence_threshold": float(threshold),
        "target_precision": float(target_precision),
        "target_met": target_met,
        "validation_precision": float(precision[k - 1]),
        "validation_coverage": k / n,
        "validation_passing": k,
        "validation_images": n,
        "min_passing": min_passing,
        "rule": ("lowest threshold whose passing validation images reach the target precision "
                 f"with at least {min_passing} passing" if target_met else
                 "target not reachable on validation: the threshold with the highest "
                 f"validation precision among those passing at least {min_passing}"),
    }


def calibrate(net: torch.nn.Module, model_config: dict, images: np.ndarray, labels: np.ndarray,
              device: torch.device, target_precision: float) -> dict:
    """Fit the temperature and choose the threshold on the validation split, through the
    serving code's own prediction path; returns the keys to add to model_config.json."""
    served = inference.ServedModel(net.eval(), model_config, device, scones_net)
    logits = inference.tta_logits(served, images)
    labels = labels.astype(np.int64)
    temperature = fit_temperature(logits, labels)
    raw = inference.probabilities_from_logits(logits, 1.0)
    calibrated = inference.probabilities_from_logits(logits, temperature)
    threshold = choose_threshold(calibrated.max(axis=1), calibrated.argmax(axis=1) == labels,
                                 target_precision)
    return {
        "temperature": temperature,
        "confidence_threshold": threshold.pop("confidence_threshold"),
        "threshold_selection": threshold,
        "calibration": {
            "method": "temperature scaling (logits / temperature), fitted on validation NLL",
            "validation_nll_before": negative_log_likelihood(logits, labels, 1.0),
            "validation_nll_after": negative_log_likelihood(logits, labels, temperature),
            "validation_ece_before": expected_calibration_error(raw, labels),
            "validation_ece_after": expected_calibration_error(calibrated, labels),
        },
    }


def plot_history(history: list[dict], path: Path, kept_epoch: int) -> None:
    """Loss and accuracy per epoch, with the epoch whose weights were kept marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    kept = next(h for h in history if h["epoch"] == kept_epoch)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], label="train")
        ax.plot(epochs, [h[f"validation_{metric}"] for h in history], label="validation")
        ax.axvline(kept_epoch, color="tab:red", linestyle="--", linewidth=1)
        ax.plot([kept_epoch], [kept[f"validation_{metric}"]], "o", color="tab:red",
                label=f"kept: epoch {kept_epoch} (validation {metric} "
                      f"{kept[f'validation_{metric}']:.3f})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_threads() -> int:
    """OMP_NUM_THREADS when set (how a shared machine, or the test suite running several
    jobs at once, says how many cores a job may take: more threads than free cores make
    torch's workers spin and run several times slower), else every core this process may use."""
    try:
        wanted = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        wanted = 0
    if wanted > 0:
        return wanted
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, len(cores) if cores else (os.cpu_count() or 1))


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    torch.set_num_threads(training_threads())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    train_data = load_split(args.train, "train")
    validation_data = load_split(args.validation, "validation")
    class_names = [str(c) for c in train_data["class_names"]]
    if [str(c) for c in validation_data["class_names"]] != class_names:
        raise TrainingError(f"class names differ: train {class_names}, "
                            f"validation {list(validation_data['class_names'])}")

    # Normalisation statistics come from the training split and travel in model_config.json.
    pixels = train_data["images"].reshape(-1, 3).astype(np.float64) / 255.0
    mean = torch.tensor(pixels.mean(axis=0), dtype=torch.float32)
    std = torch.tensor(pixels.std(axis=0) + 1e-6, dtype=torch.float32)
    x_train = normalise(torch.from_numpy(train_data["images"]), mean, std).to(device)
    y_train = torch.from_numpy(train_data["labels"].astype(np.int64)).to(device)
    x_val = normalise(torch.from_numpy(validation_data["images"]), mean, std).to(device)
    y_val = torch.from_numpy(validation_data["labels"].astype(np.int64)).to(device)

    net = SconesNet(num_classes=len(class_names), width=args.width).to(device)
    net.init_whitening(x_train)
    net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad],
                                lr=args.learning_rate, momentum=0.9, nesterov=True,
                                weight_decay=args.weight_decay)
    # The kept model is an exponential moving average of the weights (and BatchNorm
    # statistics): on 800 images the last epochs' weights wander, and their average
    # generalises better than any one of them, or than the epoch that happened to score best
    # on 100 validation images (which also leaves those images unbiased for calibration).
    averaged = copy.deepcopy(net).eval()
    averaged.requires_grad_(False)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    if args.epochs * steps_per_epoch >= MIN_ONE_CYCLE_STEPS:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=args.learning_rate, epochs=args.epochs,
            steps_per_epoch=steps_per_epoch, pct_start=0.25, anneal_strategy="linear",
            div_factor=10.0, final_div_factor=100.0)
    else:
        # OneCycleLR divides by the length of its warm-up phase, which is 0 steps for tiny
        # runs (a handful of images, an epoch or two): keep the learning rate constant.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    history, step = [], 0
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.perf_counter()
        net.train()
        if epoch == args.whiten_bias_epochs + 1:
            # The whitening layer's bias settles in a few epochs (airbench learns it for 3);
            # freezing it then saves the backward pass through the 31x31 layers below the
            # first learned convolution, about a tenth of every later step.
            net.whiten.bias.requires_grad_(False)
        order = torch.randperm(len(x_train), generator=generator).to(device)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(order), args.batch_size):
            index = order[start:start + args.batch_size]
            xb = augment(x_train[index].cpu(), generator).to(device) if device.type == "cuda" \
                else augment(x_train[index], generator)
            yb = y_train[index]
            if args.mixup_alpha > 0 or args.cutmix_alpha > 0:
                # Mixup (convex blends of image pairs) or CutMix (a box of one image pasted
                # into another), with targets blended in the same proportion: on a few
                # hundred images they regularise more than augmentation alone.
                alpha = args.cutmix_alpha or args.mixup_alpha
                lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
                            .beta(alpha, alpha))
                partner = torch.randperm(len(index), generator=generator).to(device)
                if args.cutmix_alpha > 0:
                    mixed, lam = cutmix(xb, xb[partner], lam, generator)
                else:
                    mixed = lam * xb + (1 - lam) * xb[partner]
                logits = net(mixed)
                loss = (lam * F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
                        + (1 - lam) * F.cross_entropy(logits, yb[partner],
                                                      label_smoothing=args.label_smoothing))
            else:
                logits = net(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            update_average(averaged, net, min(args.ema_decay, (1 + step) / (10 + step)))
            loss_sum += loss.item() * len(index)
            correct += (logits.argmax(1) == yb).sum().item()
        validation_loss, validation_accuracy = evaluate(averaged, x_val, y_val, 256)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / len(x_train),
            "train_accuracy": correct / len(x_train),
            "validation_loss": validation_loss,
            "validation_accuracy": validation_accuracy,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(row)
        print(f"epoch {epoch}/{args.epochs} train_loss={row['train_loss']:.4f} "
              f"train_accuracy={row['train_accuracy']:.4f} validation_loss={validation_loss:.4f} "
              f"validation_accuracy={validation_accuracy:.4f} seconds={row['seconds']:.1f}", flush=True)
    total_seconds = time.perf_counter() - started
    kept_epoch, kept = args.epochs, history[-1]
    net = averaged

    args.model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
    torch.save(state, args.model_dir / "model.pt")
    model_config = {
        "architecture": ARCHITECTURE,
        "class_names": class_names,
        "width": args.width,
        "image_size": IMAGE_SIZE,
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "kept_epoch": kept_epoch,
        "validation_accuracy": kept["validation_accuracy"],
        "torch_version": torch.__version__,
    }
    model_config.update(calibrate(net, model_config, validation_data["images"],
                                  validation_data["labels"], device, args.target_precision))
    # "not a vehicle": the out-of-distribution reference and the version's threshold
    model_config.update(inference.fit_out_of_distribution(
        inference.ServedModel(net.eval(), model_config, device, scones_net),
        train_data["images"], validation_data["images"], args.model_dir))
    (args.model_dir / "model_config.json").write_text(json.dumps(model_config, indent=2))
    code_dir = args.model_dir / "code"
    code_dir.mkdir(exist_ok=True)
    for name in SERVING_CODE:
        shutil.copy2(HERE / name, code_dir / name)

    args.output_data_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "hyperparameters": {"epochs": args.epochs, "learning_rate": args.learning_rate,
                            "batch_size": args.batch_size, "width": args.width, "seed": args.seed,
                            "weight_decay": args.weight_decay,
                            "label_smoothing": args.label_smoothing,
                            "mixup_alpha": args.mixup_alpha, "cutmix_alpha": args.cutmix_alpha,
                            "ema_decay": args.ema_decay,
                            "whiten_bias_epochs": args.whiten_bias_epochs,
                            "target_precision": args.target_precision},
        "device": device.type,
        "threads": torch.get_num_threads(),
        "train_images": len(x_train),
        "validation_images": len(x_val),
        "kept_epoch": kept_epoch,
        "validation_accuracy": kept["validation_accuracy"],
        "total_seconds": round(total_seconds, 2),
        "temperature": model_config["temperature"],
        "confidence_threshold": model_config["confidence_threshold"],
        "threshold_selection": model_config["threshold_selection"],
        "calibration": model_config["calibration"],
        "history": history,
    }
    (args.output_data_dir / "training_history.json").write_text(json.dumps(summary, indent=2))
    plot_history(history, args.output_data_dir / "training_curves.png", kept_epoch)
    return summary


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def unit_interval_open(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def env_path(name: str, fallback: str) -> Path:
    return Path(os.environ.get(name, fallback))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--epochs", type=positive_int, default=60)
    parser.add_argument("--learning-rate", type=positive_float, default=0.05)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--width", type=positive_int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--weight-decay", type=non_negative_float, default=5e-4)
    parser.add_argument("--label-smoothing", type=unit_interval, default=0.1)
    parser.add_argument("--target-precision", type=unit_interval_open, default=0.98,
                        help="precision the chosen confidence threshold must reach on validation")
    parser.add_argument("--mixup-alpha", type=non_negative_float, default=0.0,
                        help="Beta(alpha, alpha) mixing; 0 turns mixup off")
    parser.add_argument("--cutmix-alpha", type=non_negative_float, default=0.0,
                        help="Beta(alpha, alpha) box share for CutMix (takes the place of mixup); "
                             "0 turns it off")
    parser.add_argument("--ema-decay", type=unit_interval, default=0.99,
                        help="per-step decay of the kept weight average, capped by the warm-up "
                             "(1+t)/(10+t) at step t (which stays under 0.989 for 60 epochs of "
                             "800 images); 0 keeps the last weights")
    parser.add_argument("--whiten-bias-epochs", type=non_negative_int, default=3,
                        help="epochs the whitening layer's bias learns before it is frozen")
    parser.add_argument("--train", type=Path, default=env_path("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    parser.add_argument("--validation", type=Path,
                        default=env_path("SM_CHANNEL_VALIDATION", "/opt/ml/input/data/validation"))
    parser.add_argument("--model-dir", type=Path, default=env_path("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument("--output-data-dir", type=Path,
                        default=env_path("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    args = parser.parse_args(argv)  # strict: a misspelt hyperparameter must not be ignored
    if args.width < 4:
        parser.error(f"--width must be at least 4, got {args.width}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = train(args)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"trained {summary['hyperparameters']['epochs']} epochs in {summary['total_seconds']:.1f}s "
          f"on {summary['device']}; kept the weight average of epoch {summary['kept_epoch']}: "
          f"validation_accuracy={summary['validation_accuracy']:.4f}")
    print(f"calibrated: temperature={summary['temperature']:.3f}, confidence_threshold="
          f"{summary['confidence_threshold']:.4f} ({summary['threshold_selection']['rule']}: "
          f"validation precision {summary['threshold_selection']['validation_precision']:.3f}, "
          f"coverage {summary['threshold_selection']['validation_coverage']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
