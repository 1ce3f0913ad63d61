"""Bulk workflow throughput in the local engine vs the model's own batched throughput.

    .venv/bin/python benchmarks/bench_bulk.py [--images 10000] [--batch-size 256]
        [--concurrency N] [--model-tar PATH] [--workspace DIR] [--profile FILE]

Puts N real images (the shared ones, cycled under distinct keys) into a fresh workspace's
object store, then in the same run:
  * model batched: the served model's input_fn on each image + predict_fn on batches of
    --batch-size, in process (what the endpoint's batch request costs without HTTP), and
    predict_fn alone on the decoded batches;
  * bulk workflow: `BulkWorkflow(config).run_bulk(prefix)`: one execution of the
    Distributed Map ASL in moto's engine, batch Lambdas from their zips, the endpoint in
    its own process. Wall time from the start of run_bulk (putting the images into moto's
    S3 included) to every image's result read back; setup (endpoint, zips, moto, state
    machines) measured apart.
--profile FILE writes cProfile stats of this process's main thread during the bulk run;
--sample N prints the N functions most often on any thread's stack (a sampling profiler
over sys._current_frames every 2 ms: the engine's work runs on moto's worker threads,
which cProfile does not see).
By hand only: timings are not assertions.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from scones.config import load_config  # noqa: E402
from scones.console import format_table  # noqa: E402
from scones.storage import LocalObjectStore  # noqa: E402
from scones.local.endpoint.model_archive import load_model_archive  # noqa: E402
from workflow.bulk import BulkWorkflow  # noqa: E402

SAMPLE_DATA = REPO_ROOT.parent / "shared" / "datasets" / "scones-cifar100" / "train"
PREFIX = "s3://bench-incoming/images/"


class StackSampler:
    """Counts, every 2 ms, each function on any other thread's stack (self and inclusive)."""

    def __init__(self, interval: float = 0.002):
        import collections
        import threading

        self.inclusive = collections.Counter()
        self.own = collections.Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._me = None
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        import threading

        self._me = threading.get_ident()
        while not self._stop.wait(interval):
            for ident, frame in sys._current_frames().items():
                if ident == self._me:
                    continue
                seen = set()
                top = True
                while frame is not None:
                    code = frame.f_code
                    name = f"{Path(code.co_filename).name}:{code.co_firstlineno}:{code.co_name}"
                    if top:
                        self.own[name] += 1
                        top = False
                    if name not in seen:
                        self.inclusive[name] += 1
                        seen.add(name)
                    frame = frame.f_back
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, n: int) -> None:
        print(f"{self.samples} samples; inclusive (function on a stack), then own (on top):")
        for name, count in self.inclusive.most_common(n):
            print(f"  {count:7d}  {name}")
        print("own:")
        for name, count in self.own.most_common(n):
            print(f"  {count:7d}  {name}")


def bench_model(model_tar: Path, payloads: list[bytes], batch_size: int,
                callers: int = 1) -> tuple[float, float]:
    """Seconds to decode and predict every payload, batch_size at a time; and seconds for
    the predictions alone (images decoded beforehand). `callers` threads share the batches,
    as concurrent batch requests share a serving process (one torch thread each: the
    serving code's policy, so 2 callers is what a 2-core endpoint can give)."""
    import numpy as np

    model = load_model_archive(model_tar)
    try:
        module = model.module
        module.predict_fn(np.stack([module.input_fn(payloads[0], "image/png")] * 8),
                          model.model)  # warm-up
        chunks = [payloads[first:first + batch_size]
                  for first in range(0, len(payloads), batch_size)]

        def decode_and_predict(chunk):
            images = np.stack([module.input_fn(p, "image/png") for p in chunk])
            module.predict_fn(images, model.model)
            return images

        with ThreadPoolExecutor(callers) as pool:
            start = time.perf_counter()
            decoded = list(pool.map(decode_and_predict, chunks))
            both = time.perf_counter() - start
            start = time.perf_counter()
            list(pool.map(lambda batch: module.predict_fn(batch, model.model), decoded))
            return both, time.perf_counter() - start
    finally:
        model.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="batches at once (default: workflow.max_concurrency)")
    parser.add_argument("--model-tar", type=Path, required=True,
                        help="model.tar.gz to serve")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="workspace (default: a temporary folder)")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--sample", type=int, default=0, metavar="N")
    args = parser.parse_args()

    files = sorted(SAMPLE_DATA.glob("*/*.png"))
    if not files:
        sys.exit(f"no sample images under {SAMPLE_DATA}")
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="scones-bench-bulk-"))
    config = load_config("local", {"local.workspace": str(workspace.resolve()),
                                   "workflow.confidence_threshold": 0.0})
    store = LocalObjectStore(config.local.workspace / "s3")
    payloads = []
    for index in range(args.images):
        data = files[index % len(files)].read_bytes()
        store.write_bytes(f"{PREFIX}{index:06d}.png", data)
        payloads.append(data)

    model_s, predict_s = bench_model(args.model_tar, payloads, args.batch_size)
    t0 = time.perf_counter()
    with BulkWorkflow(config, model_tar=args.model_tar) as workflow:
        setup_s = time.perf_counter() - t0
        profiler = None
        if args.profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        sampler = StackSampler() if args.sample else None
        start, cpu_start = time.perf_counter(), time.process_time()
        run = workflow.run_bulk(PREFIX, batch_size=args.batch_size,
                                concurrency=args.concurrency, progress=False)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if sampler:
            sampler.stop()
            sampler.report(args.sample)
        if profiler:
            profiler.disable()
            profiler.dump_stats(str(args.profile))
    n = args.images
    if run.status != "SUCCEEDED" or len(run.results) != n:
        print(f"warning: bulk run {run.status} {run.error}: {run.cause}; "
              f"{len(run.results)} results", file=sys.stderr)
    failed = [r for r in run.results if r.status != "SUCCEEDED"]
    rows = [["model predict_fn only, decoded", n, f"{predict_s:.2f}", f"{n / predict_s:.0f}"],
            ["model batched (in process)", n, f"{model_s:.2f}", f"{n / model_s:.0f}"],
            ["bulk workflow (local engine)", n, f"{wall:.2f}", f"{n / wall:.0f}"]]
    print(format_table(["path", "images", "seconds", "images/s"], rows))
    print(f"\nbulk / model: {model_s / wall:.2f} of the model's batched throughput; batch size "
          f"{args.batch_size}, concurrency {args.concurrency or config.workflow.max_concurrency}"
          f"; {len(failed)} image(s) not SUCCEEDED")
    print(f"setup (endpoint, zips, moto, state machines) {setup_s:.1f} s, not counted; "
          f"engine-process CPU {1000 * cpu / n:.2f} ms per image")
    print(json.dumps({"Images": n, "BulkSeconds": round(wall, 3),
                      "ModelSeconds": round(model_s, 3), "SetupSeconds": round(setup_s, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
