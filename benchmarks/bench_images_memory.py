"""Peak memory of `scones workflow run --images DIR` against the number of images.

    nice -n 10 .venv/bin/python benchmarks/bench_images_memory.py --model-tar PATH
        [--counts 1000 10000] [--repo DIR]

A fresh workspace whose endpoint state file serves --model-tar; a first (uncounted) run on
a few images leaves the local endpoint running in the background, and each measured run
reuses it, as the CLI does (`--endpoint-idle-minutes 10`). For each count, that many tiny
32x32 PNGs (distinct colours, ~100 bytes each) are generated in a temporary folder and
`workflow run --images DIR --csv` runs as a real subprocess; its peak RSS (ru_maxrss of a
wrapper that only waits for it, so nothing else is counted) and wall time are reported.
--repo: the tree whose CLI runs (default this one; a checkout of an older commit measures
"before"). By hand only: figures are not assertions.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from PIL import Image  # noqa: E402

from scones.config import load_config  # noqa: E402
from scones.console import format_table  # noqa: E402
from scones.local.endpoint.background import find_running  # noqa: E402
from bench_single_image import deploy_without_capture  # noqa: E402

# Runs the command and prints its peak RSS in KB: the wrapper's own children only.
PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:], "
            "stdout=subprocess.DEVNULL).returncode; print(rc, resource.getrusage("
            "resource.RUSAGE_CHILDREN).ru_maxrss)")


def make_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        colour = (i % 256, (i // 256) % 256, (37 * i) % 256)
        Image.new("RGB", (32, 32), colour).save(folder / f"{i:05d}.png")


def measured(repo: Path, command: list[str]) -> tuple[float, float, int]:
    """(peak RSS MB, wall s, exit code) of command run from repo."""
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1", "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], cwd=repo, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0 or not run.stdout.strip():
        sys.exit(f"failed: {' '.join(command)}\n{run.stderr[-3000:]}")
    rc, peak_kb = map(int, run.stdout.split())
    return peak_kb / 1024, wall, rc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-tar", type=Path, required=True)
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repo", type=Path, default=REPO_ROOT)
    args = parser.parse_args()
    repo = args.repo.resolve()

    work = Path(tempfile.mkdtemp(prefix="scones-bench-images-"))
    workspace = work / "ws"
    config = load_config("local", {"local.workspace": str(workspace)})
    deploy_without_capture(config, args.model_tar)
    base = [sys.executable, "-m", "app.cli.main", "workflow", "run", "--csv",
            "--endpoint-idle-minutes", "10", "--set", f"local.workspace={workspace}"]
    make_images(work / "warm-up", 5)
    measured(repo, base + ["--images", str(work / "warm-up")])  # leaves the endpoint running
    rows = []
    try:
        for count in args.counts:
            folder = work / f"images-{count}"
            make_images(folder, count)
            peak, wall, rc = measured(repo, base + ["--images", str(folder)])
            rows.append([f"{count:,}", f"{peak:.0f}", f"{1024 * peak / count:.1f}",
                         f"{wall:.0f}", f"{count / wall:.0f}", rc])
            print(f"{count} images: peak {peak:.0f} MB, {wall:.0f} s", file=sys.stderr)
    finally:
        running = find_running(config)
        if running is not None:
            os.kill(running.pid, signal.SIGTERM)
    print(f"repo {repo}; load {os.getloadavg()[0]:.1f}")
    print(format_table(["images", "peak RSS MB", "KB per image", "wall s", "images/s", "exit"],
                       rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
