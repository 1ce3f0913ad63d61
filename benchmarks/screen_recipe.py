"""Screen training recipes and test-time views over repeated splits, cheaply.

    nice -n 10 .venv/bin/python benchmarks/screen_recipe.py --seeds 4 --parallel 2 \
        --config default: --config mixup:mixup-alpha=0.2 --out screen.json

Like sweep_training.py (same stratified splits by seed, the real train.py), but each trained
model is then judged under several sets of test-time views without retraining: for each
view set, the temperature is fitted and the threshold chosen on the validation split exactly
as train.py does (its fit_temperature and choose_threshold), then test accuracy, ECE and the
share of test images passing at the threshold with their precision are measured. The view
set "flip" is what the artifact serves today (train.py's own calibration, reproduced).
--parallel 2 runs two 1-core training runs side by side (the box's two cores); seconds are
then 1-core, loaded figures, for comparing configs in the same sweep only. By hand only.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_training import JOBS, SAMPLE_DATA, mean_interval, parse_config  # noqa: E402

# name -> (dy, dx, flip) views; a shift moves the image content by (dy, dx) pixels, the
# uncovered border filled by reflection (as training's random crops pad).
VIEW_SETS = {
    "flip": [(0, 0, False), (0, 0, True)],
    "flip+shift1x2": [(0, 0, False), (0, 0, True), (1, 1, False), (-1, -1, True)],
    "flip+shift1x4": [(0, 0, False), (0, 0, True), (1, 1, False), (1, 1, True),
                      (-1, -1, False), (-1, -1, True)],
    "flip+shift2x4": [(0, 0, False), (0, 0, True), (2, 2, False), (2, 2, True),
                      (-2, -2, False), (-2, -2, True)],
}


def view_logits(net, x, views):
    import torch
    import torch.nn.functional as F
    outputs = []
    with torch.inference_mode():
        for dy, dx, flip in views:
            v = x.flip(3) if flip else x
            if dy or dx:
                pad = max(abs(dy), abs(dx))
                padded = F.pad(v, (pad,) * 4, mode="reflect")
                h, w = v.shape[2:]
                v = padded[:, :, pad - dy:pad - dy + h, pad - dx:pad - dx + w]
            outputs.append(net(v.contiguous(memory_format=torch.channels_last)))
    return torch.stack(outputs, dim=1).numpy()


def evaluate_views(jobs: Path, model_dir: Path, split: Path, target_precision: float) -> dict:
    """Every view set on one trained model: validation-fitted T and threshold, test figures."""
    import torch
    sys.path.insert(0, str(jobs))
    import train  # noqa: F401  (its helpers: the exact calibration the artifact gets)
    from evaluate import expected_calibration_error
    spec = importlib.util.spec_from_file_location("served_inference", model_dir / "code" / "inference.py")
    serving = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving)
    model = serving.model_fn(str(model_dir))
    torch.set_num_threads(1)
    data = {}
    for name in ("validation", "test"):
        with np.load(split / name / "data.npz") as npz:
            images, labels = npz["images"], npz["labels"].astype(np.int64)
        x = model._normalise(torch.from_numpy(images), model.mean, model.std)
        data[name] = (x, labels)
    figures = {}
    for set_name, views in VIEW_SETS.items():
        val_logits = view_logits(model.net, data["validation"][0], views)
        test_logits = view_logits(model.net, data["test"][0], views)
        y_val, y_test = data["validation"][1], data["test"][1]
        temperature = train.fit_temperature(val_logits, y_val)
        val_p = serving.probabilities_from_logits(val_logits, temperature)
        selection = train.choose_threshold(val_p.max(1), val_p.argmax(1) == y_val, target_precision)
        threshold = selection["confidence_threshold"]
        test_p = serving.probabilities_from_logits(test_logits, temperature)
        confidence, right = test_p.max(1), test_p.argmax(1) == y_test
        passing = confidence >= threshold
        figures[set_name] = {
            "accuracy": float(right.mean()), "temperature": temperature,
            "ece_after": expected_calibration_error(test_p, y_test),
            "threshold": threshold, "target_met": selection["target_met"],
            "passing_images": int(passing.sum()), "passing_right": int(right[passing].sum()),
            "test_images": len(y_test),
            "test_probabilities": test_p.tolist(), "test_labels": y_test.tolist(),
        }
    return figures


def run(cmd: list, cores: str | None) -> None:
    prefix = ["taskset", "-c", cores] if cores else []
    result = subprocess.run(prefix + [sys.executable, *map(str, cmd)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{cmd} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def one(work: Path, splits: Path, name: str, jobs: Path, args: list[str], seed: int,
        cores: str | None, target_precision: float) -> dict:
    import time
    model_dir = work / f"{name}-{seed}" / "model"
    started = time.perf_counter()
    run([jobs / "train.py", "--train", splits / f"split-{seed}" / "train",
         "--validation", splits / f"split-{seed}" / "validation", "--model-dir", model_dir,
         "--output-data-dir", work / f"{name}-{seed}" / "output", "--seed", seed, *args], cores)
    seconds = time.perf_counter() - started
    out = run([Path(__file__).resolve(), "--evaluate-one", jobs, model_dir,
               splits / f"split-{seed}", target_precision], cores)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    row = {"config": name, "seed": seed, "train_seconds": seconds, "views": figures}
    print(f"{name} seed={seed} train_seconds={seconds:.0f} " + " ".join(
        f"{k}:acc={v['accuracy']:.2f},pass={v['passing_images']}/{v['passing_right']}"
        for k, v in figures.items()), flush=True)
    return row


def summarise(rows: list[dict]) -> None:
    from evaluate import expected_calibration_error  # noqa: F401 (jobs on sys.path)
    configs = list(dict.fromkeys(r["config"] for r in rows))
    print(f"\n{'config':<22} {'views':<15} {'n':>2} {'mean acc':>8} {'95% CI':>7} {'per split':<30} "
          f"{'pooled ECE':>10} {'pass':>6} {'sel prec':>8}")
    for config in configs:
        runs = [r for r in rows if r["config"] == config]
        for view_set in VIEW_SETS:
            figs = [r["views"][view_set] for r in runs]
            accs = [f["accuracy"] for f in figs]
            mean, half = mean_interval(accs)
            p = np.concatenate([np.array(f["test_probabilities"]) for f in figs])
            y = np.concatenate([np.array(f["test_labels"]) for f in figs])
            passing = sum(f["passing_images"] for f in figs)
            right = sum(f["passing_right"] for f in figs)
            total = sum(f["test_images"] for f in figs)
            print(f"{config:<22} {view_set:<15} {len(accs):>2} {mean:>8.4f} {half:>7.3f} "
                  f"{' '.join(f'{a:.2f}' for a in accs):<30} "
                  f"{expected_calibration_error(p, y):>10.4f} {passing / total:>6.1%} "
                  f"{right / passing if passing else float('nan'):>8.4f}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--evaluate-one":
        jobs, model_dir, split, target = sys.argv[2:6]
        print(json.dumps(evaluate_views(Path(jobs), Path(model_dir), Path(split), float(target))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SAMPLE_DATA)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--config", action="append", default=[], metavar="NAME[@JOBS]:key=value,...")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--target-precision", type=float, default=0.98)
    parser.add_argument("--splits", type=Path, help="keep the preprocessed splits here (reused)")
    parser.add_argument("--out", type=Path, help="append every run as JSON lines here")
    parser.add_argument("--results", type=Path, action="append", default=[],
                        help="summarise these --out files instead of training")
    args = parser.parse_args()
    sys.path.insert(0, str(JOBS))
    if args.results:
        summarise([json.loads(line) for path in args.results for line in path.read_text().splitlines()])
        return 0
    configs = [parse_config(c) for c in args.config]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        splits = args.splits or work / "splits"
        for seed in seeds:
            if not (splits / f"split-{seed}" / "test" / "data.npz").is_file():
                run([JOBS / "preprocess.py", "--input-dir", args.data, "--output-dir",
                     splits / f"split-{seed}", "--seed", seed], None)
        slots: Queue = Queue()
        for i in range(args.parallel):
            slots.put(str(i % 2) if args.parallel > 1 else None)

        def pinned(job):
            cores = slots.get()
            try:
                row = one(work, splits, *job, cores, args.target_precision)
                if args.out:
                    with args.out.open("a") as out:
                        out.write(json.dumps(row) + "\n")
                return row
            finally:
                slots.put(cores)

        jobs = [(name, jobs_dir, cfg, seed) for seed in seeds for name, jobs_dir, cfg in configs]
        with ThreadPoolExecutor(args.parallel) as pool:
            rows = list(pool.map(pinned, jobs))
    summarise(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
