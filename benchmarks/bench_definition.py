"""`scones pipeline definition`: CPU seconds of a fresh process, and how many times the
SageMaker SDK validated its defaults config (jsonschema) while building the definition.

    .venv/bin/python benchmarks/bench_definition.py [--runs 3]

scones.sdk loads the admin/user SageMaker defaults config once per process and marks it
validated; before that, every SDK config lookup re-validated it (60 validations, about 4 of
the 7.5 CPU seconds). By hand only: not an assertion.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCONES = Path(sys.executable).with_name("scones")

COUNT_VALIDATIONS = """
import jsonschema
calls = [0]
original = jsonschema.validate
def counted(*args, **kwargs):
    calls[0] += 1
    return original(*args, **kwargs)
jsonschema.validate = counted
from scones.config import load_config
from pipelines.pipeline import pipeline_definition
pipeline_definition(load_config("local"))
print(calls[0])
"""


def run_once() -> tuple[float, float]:
    """(wall s, CPU s of the child) of one `scones pipeline definition`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([str(SCONES), "pipeline", "definition"], cwd=REPO_ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [run_once() for _ in range(args.runs)]
    validations = subprocess.run([sys.executable, "-c", COUNT_VALIDATIONS], cwd=REPO_ROOT,
                                 check=True, capture_output=True, text=True).stdout.split()[-1]
    print(f"scones pipeline definition, median of {args.runs}: "
          f"{statistics.median(w for w, _ in runs):.1f} s wall, "
          f"{statistics.median(c for _, c in runs):.1f} s CPU; "
          f"SageMaker config validations: {validations}")


if __name__ == "__main__":
    main()
