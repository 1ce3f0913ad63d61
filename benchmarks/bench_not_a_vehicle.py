"""'Not a vehicle': how well the served out-of-distribution score refuses pictures that are
neither a bicycle nor a motorcycle, and how many real vehicle photos it refuses.

    nice .venv/bin/python benchmarks/bench_not_a_vehicle.py [--per-set 100] [--epochs 15]
        [--work DIR]

A real model (held_out_model.prepare: the pipeline's preprocess and train jobs); its
out-of-distribution reference and threshold fitted exactly as train.py fits them
(inference.fit_out_of_distribution: reference on the training split, threshold on the
validation split for 2 % false rejection). Then scored through the serving code:

    real        the 150 held-out photos nobody trained or calibrated on, as clients send
                them (RGBA PNG file, JPEG, 640 x 480 JPEG, 320 x 240 PNG), decoded as the
                endpoint decodes them
    noise, flat, scrambled, blur, texture   synthetic sets (benchmarks/ood_images.py)

Prints one JSON object: per set, AUROC against the real photos and the share refused at the
version's threshold; for the real photos, the false rejection. Goal: >= 90 % of the
synthetic pictures refused, <= 5 % of real vehicle photos refused.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import ood_images  # noqa: E402
from bench_monitor_false_alarms import clean_request  # noqa: E402
from held_out_model import add_model_arguments, held_out_model  # noqa: E402


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside score > an inside score), ties counting half (Mann-Whitney U)."""
    inside, outside = np.asarray(inside, float), np.asarray(outside, float)
    greater = (outside[:, None] > inside[None, :]).mean()
    ties = (outside[:, None] == inside[None, :]).mean()
    return float(greater + 0.5 * ties)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-set", type=int, default=100)
    add_model_arguments(parser)
    args = parser.parse_args()

    with held_out_model(args) as (work, held):
        serving, model = held["serving"], held["model"]
        reference_dir = work / "ood"
        reference_dir.mkdir(exist_ok=True)
        fitted = serving.fit_out_of_distribution(model, held["train"], held["validation"],
                                                 reference_dir)
        model.ood = serving.load_ood_reference(reference_dir, fitted)
        threshold = fitted["ood_threshold"]
        rng = np.random.default_rng(3)
        real = np.stack([serving.decode_image(clean_request(p, rng))
                         for p in held["traffic_files"]])
        real_scores = serving.ood_scores(model, real)
        results = {"real": {"images": len(real),
                            "false_rejection": round(float(np.mean(real_scores > threshold)), 4)}}
        refused_all = []
        for seed, kind in enumerate(ood_images.KINDS):
            pictures = ood_images.make(kind, args.per_set, held["train"], seed=100 + seed)
            scores = serving.ood_scores(model, pictures)
            refused = scores > threshold
            refused_all.append(refused)
            probabilities = serving.predict_batch(model, pictures)
            results[kind] = {"images": len(pictures), "auroc": round(auroc(real_scores, scores), 4),
                             "refused": round(float(refused.mean()), 4),
                             "confident_vehicle_without_ood": round(float(np.mean(
                                 probabilities.max(axis=1) >= model.config.get(
                                     "confidence_threshold", 0.8))), 4)}
        results["all_synthetic"] = {"refused": round(float(np.concatenate(refused_all).mean()),
                                                     4)}
    print(json.dumps({"ood_threshold": round(threshold, 4),
                      "validation_false_rejection": fitted["ood_selection"][
                          "validation_false_rejection"], "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
