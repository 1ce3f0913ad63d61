"""One image through `scones workflow run --image`, as a person runs it: wall time, median of
N, with a running endpoint and without one.

    .venv/bin/python benchmarks/bench_single_image.py --model-tar PATH [--repeat 3]

A fresh workspace whose endpoint state file serves --model-tar. Then:
  * without a running endpoint: `--endpoint-idle-minutes 0` with none running, so each run
    starts the endpoint in a child process and stops it (the ASL comes from the disk cache
    after the first, warm-up, run, which is not counted);
  * with a running endpoint: one left in the background by a first (uncounted) run, reused
    by each measured run.
Also the CPU seconds (user + sys) of each command, steadier than wall time on shared cores.
By hand only: timings are not assertions.
"""
from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from scones.config import load_config  # noqa: E402
from scones.console import format_table  # noqa: E402
from scones.local.deployment_state import EndpointStateFile  # noqa: E402
from scones.local.endpoint.background import find_running  # noqa: E402

SAMPLE_DATA = REPO_ROOT.parent / "shared" / "datasets" / "scones-cifar100" / "train"


def timed(command: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                         env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        sys.exit(f"failed ({run.returncode}): {' '.join(command)}\n{run.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def deploy_without_capture(config, model_tar: Path) -> None:
    """The workspace's endpoint serves model_tar as version 1, capturing nothing (what a
    deployment writes, through the deployment state's own writer)."""
    EndpointStateFile.of(config).write({
        "EndpointName": config.workflow.endpoint_name, "EndpointStatus": "InService",
        "ModelPackageVersion": 1, "LocalModelData": str(model_tar.resolve()),
        "DataCaptureConfig": {"EnableCapture": False}})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-tar", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    workspace = Path(tempfile.mkdtemp(prefix="scones-bench-single-"))
    config = load_config("local", {"local.workspace": str(workspace)})
    deploy_without_capture(config, args.model_tar)
    image = sorted(SAMPLE_DATA.glob("*/*.png"))[0]
    base = [sys.executable, "-m", "app.cli.main", "workflow", "run", "--image", str(image),
            "--json", "--set", f"local.workspace={workspace}"]

    timed(base + ["--endpoint-idle-minutes", "0"])   # warm-up: fills the ASL cache
    cold = [timed(base + ["--endpoint-idle-minutes", "0"]) for _ in range(args.repeat)]
    timed(base + ["--endpoint-idle-minutes", "10"])  # leaves an endpoint running
    running = find_running(config)
    try:
        warm = [timed(base + ["--endpoint-idle-minutes", "10"]) for _ in range(args.repeat)]
    finally:
        running = find_running(config) or running
        if running is not None:
            os.kill(running.pid, signal.SIGTERM)
    rows = [[name, f"{statistics.median(w for w, _ in runs):.2f}",
             " ".join(f"{w:.2f}" for w, _ in runs),
             f"{statistics.median(c for _, c in runs):.2f}"]
            for name, runs in (("without a running endpoint", cold),
                               ("with a running endpoint", warm))]
    print(format_table(["workflow run --image", "median s", "runs (s)", "CPU s (median)"],
                       rows))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
