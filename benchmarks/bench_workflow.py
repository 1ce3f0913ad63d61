"""Local inference workflow vs the model called directly, on the same real images.

    .venv/bin/python benchmarks/bench_workflow.py [--images 200] [--concurrency 8]
                                                  [--model-tar PATH] [--repeat 2]

Reports per-image latency p50/p95 and images/s for
  * model direct: input_fn -> predict_fn -> output_fn of the served model, in process;
  * workflow: one Step Functions execution per image (serialize -> classify over HTTP ->
    filter), the SDK's ASL in moto's engine; latency = execution start to stop,
    images/s = images / wall time of the run (setup excluded, measured apart), and the
    process's CPU time per image (steadier than wall time on shared cores).
By hand only: timings are not assertions.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from scones.console import format_table  # noqa: E402
from scones.config import load_config  # noqa: E402
from scones.local.endpoint.model_archive import load_model_archive  # noqa: E402
from workflow.run import ImageSource, Workflow  # noqa: E402

SAMPLE_DATA = REPO_ROOT.parent / "shared" / "datasets" / "scones-cifar100" / "train"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def sample_images(count: int) -> list[Path]:
    files = sorted(SAMPLE_DATA.glob("*/*.png"))
    if not files:
        sys.exit(f"no sample images under {SAMPLE_DATA}")
    return [files[i % len(files)] for i in range(count)]


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of another process (Linux /proc), in seconds."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_direct(model_tar: Path, images: list[Path]) -> tuple[list[float], float]:
    model = load_model_archive(model_tar)
    try:
        payloads = [p.read_bytes() for p in images]
        model.invoke(payloads[0], "image/png", "application/json")  # warm-up
        latencies = []
        start = time.perf_counter()
        for body in payloads:
            t0 = time.perf_counter()
            model.invoke(body, "image/png", "application/json")
            latencies.append(time.perf_counter() - t0)
        return latencies, time.perf_counter() - start
    finally:
        model.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="executions at once (default: workflow.max_concurrency)")
    parser.add_argument("--model-tar", type=Path,
                        help="model.tar.gz to serve (default: the deployed/registered one)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="workflow runs on the same deployment; the first warms up")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="workspace (default: the configured one)")
    args = parser.parse_args()

    overrides = {"workflow.confidence_threshold": 0.0}  # measure the pass path
    if args.workspace:
        overrides["local.workspace"] = str(args.workspace.resolve())
    config = load_config("local", overrides)
    images = sample_images(args.images)
    sources = [ImageSource(label=str(p), path=p) for p in images]

    t0 = time.perf_counter()
    with Workflow(config, model_tar=args.model_tar) as workflow:
        setup_s = time.perf_counter() - t0
        model_tar = scones.local.endpoint.started_serving.tar_path
        runs = []
        for _ in range(max(1, args.repeat)):
            start, cpu_start = time.perf_counter(), time.process_time()
            endpoint_cpu_start = process_cpu_seconds(scones.local.endpoint.pid)
            results = workflow.run(sources, concurrency=args.concurrency, progress=False)
            runs.append((results, time.perf_counter() - start, time.process_time() - cpu_start,
                         process_cpu_seconds(scones.local.endpoint.pid) - endpoint_cpu_start))
    results, wall, cpu, endpoint_cpu = runs[-1]
    failed = [r for r in results if r.status != "SUCCEEDED"]
    if failed:
        print(f"warning: {len(failed)} executions failed, e.g. {failed[0].error}: "
              f"{failed[0].cause}", file=sys.stderr)
    flow_latencies = [r.seconds for r in results if r.seconds is not None]
    direct_latencies, direct_wall = bench_direct(model_tar, images)

    n = len(images)
    flow_rate, direct_rate = n / wall, n / direct_wall
    rows = [
        ["model direct", n, f"{1000 * percentile(direct_latencies, .5):.1f}",
         f"{1000 * percentile(direct_latencies, .95):.1f}", f"{direct_rate:.1f}"],
        ["local workflow", n, f"{1000 * percentile(flow_latencies, .5):.1f}",
         f"{1000 * percentile(flow_latencies, .95):.1f}", f"{flow_rate:.1f}"],
    ]
    print(format_table(["path", "images", "p50 ms", "p95 ms", "images/s"], rows))
    print(f"\nworkflow / direct: {flow_rate / direct_rate:.3f} of the throughput, "
          f"{statistics.median(flow_latencies) / statistics.median(direct_latencies):.0f}x "
          f"the median latency")
    print(f"concurrency {args.concurrency or config.workflow.max_concurrency}; setup "
          f"(endpoint, zips, moto, state machine) {setup_s:.1f} s, not counted; earlier runs: "
          + ", ".join(f"{n / w:.1f} images/s" for _, w, _, _ in runs[:-1]))
    # The engine and the Lambdas share this process's GIL: its CPU time per image bounds
    # the throughput (1000 / ms per image), whatever other load shares the cores. The
    # endpoint runs in its own process, under its own GIL.
    print(f"workflow CPU per image: {1000 * cpu / n:.1f} ms in this process (engine, "
          f"Lambdas), {1000 * endpoint_cpu / n:.1f} ms in the endpoint process (model, HTTP)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
