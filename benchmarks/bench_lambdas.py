"""Each Lambda's zip: its size, and its cold import time as the Lambda runtime pays it.

    .venv/bin/python benchmarks/bench_lambdas.py [--runs 7]

Cold import = a fresh interpreter importing the handler module from the zip alone
(PYTHONPATH=<zip>, as the runtime puts the code on sys.path), boto3 included since the
handlers import it at module level; median of --runs fresh processes. For comparison, the
same for `import sagemaker` - what a Lambda would pay if it used the SDK (the reason the
Lambdas use boto3 and the standard library only). By hand only: not an assertion.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lambdas.build import build_lambda_zips  # noqa: E402
from app.cli.common import format_table  # noqa: E402

TIMER = ("import time, importlib, sys; t = time.perf_counter(); importlib.import_module(sys.argv[1]); "
         "print(time.perf_counter() - t)")


def cold_import_seconds(module: str, pythonpath: str | None, runs: int) -> float:
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    env["SAGEMAKER_SUPPRESS_V2_WARNING"] = "1"
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", TIMER, module], env=env, check=True,
                             capture_output=True, text=True).stdout
        times.append(float(out.strip().splitlines()[-1]))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, zip_path in sorted(build_lambda_zips(tmp).items()):
            seconds = cold_import_seconds(f"lambdas.{key}", str(zip_path), args.runs)
            rows.append([key, f"{zip_path.stat().st_size / 1024:.1f} KiB",
                         f"{seconds * 1000:.0f} ms"])
    rows.append(["(import sagemaker, for comparison)", "-",
                 f"{cold_import_seconds('sagemaker', None, max(3, args.runs // 2)) * 1000:.0f} ms"])
    print(format_table(["function", "zip size", "cold import (median)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
