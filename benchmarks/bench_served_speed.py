"""The served model's speed against issue 16's limits (≥ 800 images/s batched, ≤ 5 ms for
one image), on a model.tar.gz:

    .venv/bin/python benchmarks/bench_served_speed.py MODEL_TAR

Batched: bench_bulk.bench_model (input_fn + predict_fn on batches of 256, and predict_fn
alone) over the 1,000 sample images twice, 3 times; from one caller (one core: the serving
code runs one torch thread per request), then from 2 concurrent callers, as the bulk
workflow's concurrent batch requests reach a 2-core endpoint. Single image: bench_workflow.bench_direct
(input_fn -> predict_fn -> output_fn per image) on 300 images, twice. Run it by hand on a
quiet machine: it is not a test.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bulk import bench_model  # noqa: E402
from bench_workflow import SAMPLE_DATA, bench_direct, sample_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_tar", type=Path)
    args = parser.parse_args()
    payloads = [p.read_bytes() for p in sorted(SAMPLE_DATA.glob("*/*.png"))] * 2
    for callers in (1, 2):
        for _ in range(3):
            both, predict = bench_model(args.model_tar, payloads, 256, callers)
            print(f"batched 256, {callers} caller(s): decode+predict {len(payloads) / both:.0f} "
                  f"images/s, predict alone {len(payloads) / predict:.0f} images/s", flush=True)
    for _ in range(2):
        latencies, _wall = bench_direct(args.model_tar, sample_images(300))
        latencies.sort()
        print(f"single image: median {1000 * statistics.median(latencies):.2f} ms, "
              f"p95 {1000 * latencies[int(0.95 * len(latencies))]:.2f} ms, "
              f"best {1000 * latencies[0]:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
