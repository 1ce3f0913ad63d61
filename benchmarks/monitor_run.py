"""How long `scones monitor run` takes per captured record, and how its drift verdicts hold
on repeated clean and drifted batches (false and true alarm rates).

    .venv/bin/python benchmarks/monitor_run.py [--records 2000] [--batches 10] [--batch-size 60]

Uses real images from ../shared/datasets/scones-cifar100/train: a baseline profiled from
400 of them (with constant 0.5/0.5 probabilities: the model's part does not matter for the
input features), then capture files in SageMaker's layout. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "datasets" / "scones-cifar100" / "train"
CLASSES = ("bicycle", "motorcycle")


def images() -> list[Path]:
    return [p for c in CLASSES for p in sorted((DATA / c).glob("*.png"))]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def capture_line(body: bytes, when: datetime) -> str:
    return json.dumps({"captureData": {
        "endpointInput": {"observedContentType": "image/png", "mode": "INPUT",
                          "data": base64.b64encode(body).decode(), "encoding": "BASE64"},
        "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                           "data": "[0.5, 0.5]", "encoding": "JSON"}},
        "eventMetadata": {"eventId": str(uuid.uuid4()), "inferenceId": str(uuid.uuid4()),
                          "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          "modelVersion": 1},
        "eventVersion": "0"})


def register_baseline(workspace: str, base_paths: list[Path]):
    """A local workspace whose version 1 carries a baseline profiled from base_paths (with
    constant 0.5/0.5 probabilities: the model's part does not matter for the input
    features). Returns the workspace's config and backend."""
    from scones.backend import backend_for
    from scones.config import load_config
    from workflow.monitoring import profile

    arrays = [profile.decode_for_model(p.read_bytes())[0] for p in base_paths]
    vectors = np.array([profile.describe(a) for a in arrays])
    reference = profile.fit_ood_reference(vectors)
    rows = profile.image_rows(arrays, [(32, 32, "RGB")] * len(arrays),
                              np.full((len(arrays), 2), 0.5), CLASSES, reference,
                              scores=profile.cross_fitted_ood_scores(vectors))
    statistics = profile.statistics(rows)
    config = load_config("local", overrides={"local.workspace": workspace})
    backend = backend_for(config)
    store = backend.object_store()
    for name, document in ((profile.STATISTICS_FILE, statistics),
                           (profile.CONSTRAINTS_FILE, profile.constraints(statistics)),
                           (profile.OOD_FILE, reference)):
        store.write_bytes(f"s3://{config.aws.bucket}/baseline/{name}",
                          json.dumps(document).encode())
    store.write_bytes(f"s3://{config.aws.bucket}/m/model.tar.gz", b"not used")
    source = {"S3Uri": f"s3://{config.aws.bucket}/baseline/statistics.json"}
    backend.registry().register(
        InferenceSpecification={"Containers": [{"ModelDataUrl":
                                                f"s3://{config.aws.bucket}/m/model.tar.gz"}]},
        DriftCheckBaselines={"ModelDataQuality": {"Statistics": source}})
    return config, backend


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=60)
    args = parser.parse_args()

    from workflow.monitoring.check import run_monitor

    paths = images()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(paths))
    base_paths = [paths[i] for i in order[:400]]
    pool = [paths[i] for i in order[400:]]
    with tempfile.TemporaryDirectory() as tmp:
        config, _ = register_baseline(f"{tmp}/ws", base_paths)
        capture = Path(tmp) / "capture" / "2026" / "11" / "25" / "10"
        capture.mkdir(parents=True)
        t0 = datetime(2026, 11, 25, 10, tzinfo=timezone.utc)

        def write(bodies: list[bytes], name: str) -> None:
            (capture / f"{name}.jsonl").write_text("".join(
                capture_line(b, t0 + timedelta(seconds=i)) + "\n" for i, b in enumerate(bodies)))

        bodies = [pool[i % len(pool)].read_bytes() for i in range(args.records)]
        write(bodies, "throughput")
        start = time.perf_counter()
        result = run_monitor(config, source=str(Path(tmp) / "capture"))
        seconds = time.perf_counter() - start
        assert result.summary["Records"] == args.records

        alarms = {"clean": 0, "dark": 0, "inverted": 0, "noise": 0}
        for batch in range(args.batches):
            chosen = [pool[i] for i in rng.choice(len(pool), args.batch_size, replace=False)]
            clean = [np.asarray(Image.open(p).convert("RGB")) for p in chosen]
            variants = {"clean": clean, "dark": [(a * 0.35).astype(np.uint8) for a in clean],
                        "inverted": [255 - a for a in clean],
                        "noise": [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                                  for _ in clean]}
            for kind, arrays in variants.items():
                write([png(a) for a in arrays], f"{kind}-{batch}")
                alarms[kind] += bool(run_monitor(config, source=str(Path(tmp) / "capture"))
                                     .violations)
    print(json.dumps({
        "Records": args.records, "Seconds": round(seconds, 2),
        "RecordsPerSecond": round(args.records / seconds, 1),
        "BatchSize": args.batch_size, "Batches": args.batches,
        "AlarmRate": {k: round(v / args.batches, 2) for k, v in alarms.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
