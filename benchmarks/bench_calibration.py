"""Calibration and selective accuracy of the default training config over repeated splits.

    .venv/bin/python benchmarks/bench_calibration.py --seeds 8 [--results sweep.json]

Each split (seed) runs the real job scripts (preprocess -> train -> evaluate, see
sweep_training.py), then reads evaluation.json's custom_metrics: ECE (15 bins) on the test
split before and after the artifact's temperature, and at the artifact's own threshold
(chosen on validation for --target-precision) the accuracy of the test images that pass and
the share that passes. --results reads a sweep_training.py --out file instead of training.
Goals (issue 16): ECE <= 0.03 with >= 75% passing at >= 0.98 precision; mean test accuracy
>= 0.93 (aim 0.94). By hand only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_training import (JOBS, SAMPLE_DATA, print_accuracy_table,  # noqa: E402
                            print_calibration_table, sweep)

GOALS = {"ece_after": 0.03, "coverage": 0.75, "selective_accuracy": 0.98, "accuracy": 0.93}


def verdicts(runs: list[dict]) -> list[str]:
    passing = sum(r["passing_images"] for r in runs)
    pooled = sum(r["selective_accuracy"] * r["passing_images"] for r in runs if r["passing_images"])
    figures = {
        "accuracy": statistics.mean(r["accuracy"] for r in runs),
        "ece_after": statistics.mean(r["ece_after"] for r in runs),
        "coverage": statistics.mean(r["coverage"] for r in runs),
        "selective_accuracy": pooled / passing if passing else float("nan"),
    }
    lines = []
    for key, goal in GOALS.items():
        met = figures[key] <= goal if key == "ece_after" else figures[key] >= goal
        sign = "<=" if key == "ece_after" else ">="
        lines.append(f"  {key:<19} {figures[key]:.4f}  goal {sign} {goal}  {'met' if met else 'MISSED'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SAMPLE_DATA)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--target-precision", type=float, default=0.98)
    parser.add_argument("--results", type=Path, help="a sweep_training.py --out file to summarise")
    parser.add_argument("--out", type=Path, help="write every run as JSON here")
    args = parser.parse_args()
    if args.results:
        results = json.loads(args.results.read_text())
    else:
        config = ("default", JOBS, ["--target-precision", str(args.target_precision)])
        results = sweep(args.data, range(args.first_seed, args.first_seed + args.seeds), [config])
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    names = list(dict.fromkeys(r["config"] for r in results))
    print_accuracy_table(results, names)
    print_calibration_table(results, names)
    for name in names:
        runs = [r for r in results if r["config"] == name and r.get("ece_after") is not None]
        if runs:
            print(f"\n{name} (n={len(runs)} splits):")
            print("\n".join(verdicts(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
