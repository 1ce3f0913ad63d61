"""Monitoring alarm rates on raw traffic: clean batches like the training data must not alarm,
drifted ones must.

    nice .venv/bin/python benchmarks/bench_monitor_false_alarms.py [--batches 24]
        [--drift-batches 6] [--batch-size 60] [--epochs 15] [--work DIR]

A real model (held_out_model.prepare: the pipeline's own preprocess and train jobs) and its
real Baseline step (baseline.py on half of the 300 held-out pictures). Then batches of
traffic from the other half, checked exactly as `scones monitor run` checks a version's
capture (workflow.monitoring.check.drift_checks against the baseline, the alarm at
monitoring.alarm_violations):

    clean          the held-out pictures as clients send them, each at random one of: the
                   RGBA PNG file itself, a JPEG of it, a 640 x 480 JPEG or a 320 x 240 PNG
                   enlargement of it (a larger photo of the same picture)
    dark           the same pictures at 35 % brightness (a dusk camera)
    inverted       colour-inverted
    noise          uniform random pixels
    not_a_vehicle  a mix of flat colours, scrambled patches, heavy blur and other textures

The answers are the model's (its serving code, on the image decoded as the endpoint decodes
it). Prints one JSON object: per kind, the batches, alarms, alarm rate and the features that
were violated.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import ood_images  # noqa: E402
from held_out_model import add_model_arguments, held_out_model, run_job  # noqa: E402


def encode(array: np.ndarray, form: str) -> bytes:
    image = Image.fromarray(array)
    if form in ("jpeg-640", "png-320"):
        image = image.resize((640, 480) if form == "jpeg-640" else (320, 240),
                             Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if form.startswith("jpeg") else "PNG", quality=92)
    return buffer.getvalue()


def clean_request(path: Path, rng: np.random.Generator) -> bytes:
    form = ("raw-rgba-png", "jpeg", "jpeg-640", "png-320")[rng.integers(0, 4)]
    if form == "raw-rgba-png":
        return path.read_bytes()
    return encode(np.asarray(Image.open(path).convert("RGB")), form)


def batch_requests(kind: str, files: list[Path], rng: np.random.Generator, size: int,
                   photos: np.ndarray) -> list[bytes]:
    chosen = [files[i] for i in rng.choice(len(files), size=size, replace=False)]
    if kind == "clean":
        return [clean_request(p, rng) for p in chosen]
    if kind == "noise":
        return [encode(a, "png") for a in ood_images.make("noise", size, photos,
                                                          int(rng.integers(1 << 30)))]
    if kind == "not_a_vehicle":
        kinds = ("flat", "scrambled", "blur", "texture")
        return [encode(ood_images.make(kinds[i % 4], 1, photos, int(rng.integers(1 << 30)))[0],
                       "png") for i in range(size)]
    out = []
    for path in chosen:
        image = Image.open(path).convert("RGB")
        if kind == "dark":
            image = Image.fromarray((np.asarray(image) * 0.35).astype(np.uint8))
        elif kind == "inverted":
            image = ImageOps.invert(image)
        out.append(encode(np.asarray(image), "png"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=24, help="clean batches")
    parser.add_argument("--drift-batches", type=int, default=6, help="batches per drift kind")
    parser.add_argument("--batch-size", type=int, default=60)
    add_model_arguments(parser)
    args = parser.parse_args()

    from scones.config import load_config
    from workflow.monitoring import profile
    from workflow.monitoring.check import VersionBaseline, drift_checks

    with held_out_model(args) as (work, held):
        baseline_out = work / "baseline"
        run_job("baseline.py", "--model-dir", held["model_dir"], "--data-dir",
                held["baseline_dir"], "--output-dir", baseline_out)
        documents = [json.loads((baseline_out / name).read_text()) for name in
                     (profile.STATISTICS_FILE, profile.CONSTRAINTS_FILE, profile.OOD_FILE)]
        baseline = VersionBaseline(1, *documents, accuracy=None)
        config = load_config("local", overrides={"local.workspace": str(work / "ws")})
        serving, model = held["serving"], held["model"]
        classes = tuple(model.class_names)
        rng = np.random.default_rng(1)
        results = {}
        plan = [("clean", args.batches)] + [(kind, args.drift_batches) for kind in
                                            ("dark", "inverted", "noise", "not_a_vehicle")]
        for kind, batches in plan:
            alarms, violated = 0, Counter()
            for _ in range(batches):
                requests = batch_requests(kind, held["traffic_files"], rng, args.batch_size,
                                          held["train"])
                # the endpoint's answer (its own decoder) and the monitor's profile of it
                decoded = np.stack([serving.decode_image(r) for r in requests])
                probabilities = serving.predict_batch(model, decoded)
                images = [profile.decode_for_model(r)[0] for r in requests]
                rows = profile.image_rows(images, None, probabilities, classes,
                                          baseline.ood_reference)
                checks = drift_checks(config, baseline, rows)
                names = [c["FeatureName"] for c in checks if c["Violation"]]
                violated.update(names)
                alarms += len(names) >= config.monitoring.alarm_violations
            results[kind] = {"batches": batches, "alarms": alarms,
                             "alarm_rate": round(alarms / batches, 3),
                             "violated_features": dict(violated.most_common())}
    print(json.dumps({"batch_size": args.batch_size, "baseline_images": 150,
                      "traffic_pool": 150, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
