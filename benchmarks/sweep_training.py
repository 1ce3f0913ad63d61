"""Compare training configurations over several data splits: accuracy and 2-core time.

    .venv/bin/python benchmarks/sweep_training.py --seeds 8 --parallel 1 \
        --config base:epochs=30,width=16,learning-rate=0.01 \
        --config long:epochs=60,width=16,learning-rate=0.01

One test split holds 100 images, so one run's accuracy is +/- 0.03: a configuration is
judged by its mean over --seeds different stratified splits (the split seed is also the
training seed). Every run goes through the real job scripts (preprocess -> train ->
evaluate through the artifact's serving code), pinned to its own 2 CPU cores with taskset
when --parallel > 1 so the seconds match the 2-core target. By hand only.

To compare against the previous default on the same load, run a copy of the old job scripts
(`git archive HEAD~1 pipelines/jobs | tar -x -C /tmp/old`) as `--config old@/tmp/old/pipelines/jobs:`.
On a busy shared 2-core box, `--parallel 2 --cores-per-run 1` runs two 1-thread runs side by
side (2-thread torch stalls badly when the cores are oversubscribed): accuracy is the same,
seconds are paired but are not the 2-core figure. Runs with calibrated artifacts also get
ECE, threshold and selective accuracy per split (see bench_calibration.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

REPO_ROOT = Path(__file__).resolve().parent.parent
JOBS = REPO_ROOT / "pipelines" / "jobs"
SAMPLE_DATA = REPO_ROOT.parent / "shared" / "datasets" / "scones-cifar100" / "train"


def parse_config(text: str) -> tuple[str, Path, list[str]]:
    """NAME[@JOBS_DIR]:key=value,... -> (name, job scripts folder, train.py arguments).

    @JOBS_DIR runs another copy of the job scripts (e.g. `git archive` of the previous
    commit), so an old default and a new one are timed in the same sweep, on the same load.
    """
    head, _, settings = text.partition(":")
    name, _, jobs = head.partition("@")
    args = []
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        args += [f"--{key}", value]
    return name, Path(jobs).resolve() if jobs else JOBS, args


def run(cmd: list, cores: str | None) -> subprocess.CompletedProcess:
    prefix = ["taskset", "-c", cores] if cores else []
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # CPU timings, also on a GPU machine
    result = subprocess.run(prefix + [sys.executable, *map(str, cmd)], capture_output=True,
                            text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"{cmd[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def one_run(work: Path, name: str, jobs: Path, args: list[str], seed: int, cores: str | None) -> dict:
    split = work / f"split-{seed}"
    run_dir = work / f"{name}-{seed}"
    started = time.perf_counter()
    run([jobs / "train.py", "--train", split / "train", "--validation", split / "validation",
         "--model-dir", run_dir / "model", "--output-data-dir", run_dir / "output",
         "--seed", seed, *args], cores)
    seconds = time.perf_counter() - started
    with tarfile.open(run_dir / "model.tar.gz", "w:gz") as tar:
        for path in (run_dir / "model").iterdir():
            tar.add(path, arcname=path.name)
    (run_dir / "evaluate-in").mkdir()
    (run_dir / "model.tar.gz").rename(run_dir / "evaluate-in" / "model.tar.gz")
    run([jobs / "evaluate.py", "--model-dir", run_dir / "evaluate-in", "--test-dir",
         split / "test", "--output-dir", run_dir / "evaluation"], cores)
    report = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    accuracy = report["binary_classification_metrics"]["accuracy"]["value"]
    row = {"config": name, "seed": seed, "accuracy": accuracy, "seconds": seconds}
    row.update(calibration_figures(report, run_dir / "model" / "model_config.json"))
    print(f"{name} seed={seed} accuracy={accuracy:.3f} train_seconds={seconds:.1f}"
          + "".join(f" {k}={v:.3f}" for k, v in row.items() if k in CALIBRATION_KEYS and v is not None),
          flush=True)
    return row


CALIBRATION_KEYS = ("ece_before", "ece_after", "threshold", "selective_accuracy", "coverage",
                    "validation_coverage")


def calibration_figures(report: dict, model_config_path: Path) -> dict:
    """ECE and selective figures from evaluation.json's custom_metrics (None for job scripts
    from before calibration)."""
    custom = report.get("custom_metrics")
    if not custom:
        return dict.fromkeys(CALIBRATION_KEYS)
    selective = custom["selective_prediction"]
    model_config = json.loads(model_config_path.read_text())
    return {
        "ece_before": custom["calibration"]["ece_before_calibration"]["value"],
        "ece_after": custom["calibration"]["ece_after_calibration"]["value"],
        "temperature": custom["calibration"]["temperature"],
        "threshold": selective["confidence_threshold"],
        "selective_accuracy": selective["selective_accuracy"]["value"],
        "coverage": selective["coverage"]["value"],
        "passing_images": selective["passing_images"],
        "validation_coverage": model_config["threshold_selection"]["validation_coverage"],
        "target_met": model_config["threshold_selection"]["target_met"],
        "reliability": custom["calibration"].get("reliability_after_calibration"),
    }


def pooled_ece(runs: list[dict]) -> float:
    """ECE over the test images of all runs together, from each run's reliability bins: on
    100 images a perfectly calibrated model still shows an ECE of a few points by chance."""
    if not all(r.get("reliability") for r in runs):
        return float("nan")  # evaluations from before the bins were written
    total, gap = 0, 0.0
    for b in range(len(runs[0]["reliability"]["count"])):
        count = sum(r["reliability"]["count"][b] for r in runs)
        if count:
            right = sum(r["reliability"]["count"][b] * r["reliability"]["accuracy"][b]
                        for r in runs if r["reliability"]["count"][b])
            confidence = sum(r["reliability"]["count"][b] * r["reliability"]["mean_confidence"][b]
                             for r in runs if r["reliability"]["count"][b])
            gap += abs(right - confidence)
            total += count
    return gap / total if total else float("nan")


def sweep(data: Path, seeds: range, configs: list[tuple[str, Path, list[str]]],
          parallel: int = 1, cores_per_run: int = 2) -> list[dict]:
    """Every config on every split (seed), interleaved so load changes hit them alike."""
    slots: Queue = Queue()
    available = os.cpu_count() or 1
    for i in range(parallel):
        # More slots than cores (a busy shared box): slots share cores round-robin.
        cores = ",".join(str((cores_per_run * i + c) % available) for c in range(cores_per_run))
        slots.put(cores if parallel > 1 or cores_per_run != 2 else None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in seeds:
            run([JOBS / "preprocess.py", "--input-dir", data, "--output-dir",
                 work / f"split-{seed}", "--seed", seed], None)

        def pinned(job):
            cores = slots.get()
            try:
                return one_run(work, *job, cores)
            finally:
                slots.put(cores)

        jobs = [(name, jobs_dir, cfg_args, seed) for seed in seeds
                for name, jobs_dir, cfg_args in configs]
        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(pinned, jobs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SAMPLE_DATA)
    parser.add_argument("--seeds", type=int, default=8, help="how many splits (seeds F..F+N-1)")
    parser.add_argument("--first-seed", type=int, default=0, help="F: the first split's seed")
    parser.add_argument("--config", action="append", required=True,
                        metavar="NAME:key=value,...", help="train.py arguments of one config")
    parser.add_argument("--parallel", type=int, default=1,
                        help="runs at once, each pinned to --cores-per-run cores")
    parser.add_argument("--cores-per-run", type=int, default=2,
                        help="1: accuracy screening on a busy 2-core box (two 1-thread runs at "
                             "once, --parallel 2); its seconds are not the 2-core figure")
    parser.add_argument("--out", type=Path, help="write every run as JSON here")
    args = parser.parse_args()
    configs = [parse_config(c) for c in args.config]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    results = sweep(args.data, seeds, configs, args.parallel, args.cores_per_run)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print_accuracy_table(results, [name for name, _, _ in configs])
    print_calibration_table(results, [name for name, _, _ in configs])
    return 0


# Two-sided 95 % Student t quantiles by degrees of freedom (n - 1 splits).
T_95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
        10: 2.23, 11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13}


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t interval over splits (nan for one split)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, T_95.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5


def print_accuracy_table(results: list[dict], names: list[str]) -> None:
    """Mean test accuracy over splits with its 95 % interval; a split's own accuracy is only
    +/- 0.03 (100 test images), so configurations are compared by these means."""
    print(f"\n{'config':<14} {'n':>3} {'mean acc':>8} {'95% CI':>8} {'stdev':>6} {'min':>6} "
          f"{'train s':>8}")
    for name in names:
        accs = [r["accuracy"] for r in results if r["config"] == name]
        secs = [r["seconds"] for r in results if r["config"] == name]
        mean, half = mean_interval(accs)
        print(f"{name:<14} {len(accs):>3} {mean:>8.4f} {'+/-':>3}{half:>5.3f} "
              f"{statistics.stdev(accs) if len(accs) > 1 else 0.0:>6.3f} {min(accs):>6.3f} "
              f"{statistics.mean(secs):>8.1f}")


def print_calibration_table(results: list[dict], names: list[str]) -> None:
    """Means over splits of the calibration figures. Selective accuracy is pooled (all passing
    test images of all splits together), so a split where few pass does not weigh as much as
    one where many pass; "pooled" is the ECE of all splits' test images together."""
    rows = [(name, [r for r in results if r["config"] == name and r.get("ece_after") is not None])
            for name in names]
    rows = [(name, runs) for name, runs in rows if runs]
    if not rows:
        return
    print(f"\n{'config':<14} {'ECE raw':>8} {'ECE cal':>8} {'pooled':>8} {'T':>6} {'thresh':>7} "
          f"{'pass':>6} {'min pass':>8} {'sel acc':>8} {'min sel':>8} {'target met':>10}")
    for name, runs in rows:
        mean = lambda key: statistics.mean(r[key] for r in runs)  # noqa: E731
        passing = sum(r["passing_images"] for r in runs)
        right = sum(r["selective_accuracy"] * r["passing_images"] for r in runs if r["passing_images"])
        pooled = right / passing if passing else float("nan")
        min_selective = min(r["selective_accuracy"] for r in runs if r["passing_images"])
        print(f"{name:<14} {mean('ece_before'):>8.4f} {mean('ece_after'):>8.4f} "
              f"{pooled_ece(runs):>8.4f} {mean('temperature'):>6.2f} "
              f"{mean('threshold'):>7.3f} {mean('coverage'):>6.1%} "
              f"{min(r['coverage'] for r in runs):>8.1%} {pooled:>8.4f} {min_selective:>8.3f} "
              f"{sum(r['target_met'] for r in runs):>7}/{len(runs)}")


if __name__ == "__main__":
    sys.exit(main())
