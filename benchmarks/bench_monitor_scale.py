"""Peak memory and time of `monitor run` as the capture grows, and of the next run after it
(what a growing history costs every later run).

    .venv/bin/python benchmarks/bench_monitor_scale.py --records 10000 [--next 1000]

Each figure is taken in a fresh child process (peak RSS = ru_maxrss of that process): the
first run reads --records capture records of real images (a registered baseline, so every
record is profiled for drift); then --next more records arrive with ground truth for
them, and a second run reads those. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from monitor_run import capture_line, images, register_baseline  # noqa: E402

FILE_RECORDS = 1000  # records per capture file (an endpoint's files are rotated)


def _setup(workspace: str) -> None:
    paths = images()
    rng = np.random.default_rng(0)
    register_baseline(workspace, [paths[i] for i in rng.permutation(len(paths))[:400]])


def _write_capture(folder: Path, name: str, count: int, start: datetime, offset: int) -> list:
    """count records (cycling over the real images); their inference ids."""
    pool = [p.read_bytes() for p in images()]
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for first in range(0, count, FILE_RECORDS):
        with open(folder / f"{name}-{first // FILE_RECORDS:05d}.jsonl", "w") as out:
            for i in range(first, min(count, first + FILE_RECORDS)):
                line = json.loads(capture_line(pool[(offset + i) % len(pool)],
                                               start + timedelta(milliseconds=10 * i)))
                line["eventMetadata"]["inferenceId"] = f"r-{offset + i}"
                ids.append(f"r-{offset + i}")
                out.write(json.dumps(line) + "\n")
    return ids


def _run(workspace: str, source: str, queue) -> None:
    from scones.config import load_config
    from workflow.monitoring.check import run_monitor

    config = load_config("local", overrides={"local.workspace": workspace})
    start = time.perf_counter()
    result = run_monitor(config, source=source)
    queue.put({"Records": result.summary["Records"],
               "Seconds": round(time.perf_counter() - start, 1),
               "PeakRssMB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})


def measured(workspace: str, source: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_run, args=(workspace, source, queue))
    child.start()
    answer = queue.get()
    child.join()
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--next", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = f"{tmp}/ws"
        _setup(workspace)
        capture = Path(tmp) / "capture"
        hour = capture / "2026" / "11" / "25" / "10"
        t0 = datetime(2026, 11, 25, 10, tzinfo=timezone.utc)
        ids = _write_capture(hour, "first", args.records, t0, 0)
        first = measured(workspace, str(capture))
        more = _write_capture(hour, "next", args.next, t0 + timedelta(minutes=30), args.records)
        from scones.config import load_config
        from workflow.monitoring.check import ingest_labels

        labels = Path(tmp) / "labels.jsonl"
        labels.write_text("".join(json.dumps({"groundTruthData": {"data": "bicycle"},
                                              "eventMetadata": {"eventId": i}}) + "\n"
                                  for i in (ids[::10] + more[::10])))
        ingest_labels(load_config("local", overrides={"local.workspace": workspace}),
                      str(labels))
        second = measured(workspace, str(capture))
    print(json.dumps({"FirstRun": first, "NextRun": second}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
