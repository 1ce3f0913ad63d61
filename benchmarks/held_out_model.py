"""A real model and held-out pictures for the monitoring and "not a vehicle" benchmarks.

prepare(work, epochs) runs the pipeline's own jobs on the 1,000 shared images: preprocess.py
(validation 10 %, test 30 %: 300 held-out pictures), train.py, then packs model.tar.gz as
SageMaker does. The held-out test split is halved: one half is what the Baseline step
profiles, the other half (as raw files) is the traffic nobody trained or baselined on.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "pipelines" / "jobs"
DATA = REPO.parent / "shared" / "datasets" / "scones-cifar100" / "train"


def run_job(script: str, *args) -> None:
    subprocess.run([sys.executable, str(JOBS / script), *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--epochs and --work: the options of every benchmark built on prepare()."""
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--work", type=Path, default=None,
                        help="reuse this folder's model (default: a fresh temporary one)")


@contextlib.contextmanager
def held_out_model(args: argparse.Namespace) -> Iterator[tuple[Path, dict]]:
    """(the work folder, prepare()'s model and splits): in args.work, kept, or in a
    temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        yield work, prepare(work, args.epochs)


def prepare(work: Path, epochs: int = 15, seed: int = 42) -> dict:
    processed, model_dir = work / "processed", work / "model"
    if not (model_dir / "model.tar.gz").is_file():
        run_job("preprocess.py", "--input-dir", DATA, "--output-dir", processed,
                "--validation-fraction", "0.1", "--test-fraction", "0.3", "--seed", seed)
        run_job("train.py", "--train", processed / "train", "--validation",
                processed / "validation", "--model-dir", model_dir, "--output-data-dir",
                work / "output", "--epochs", epochs, "--seed", seed)
        archive = work / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(model_dir.rglob("*")):
                if "__pycache__" not in path.parts:
                    tar.add(path, arcname=str(path.relative_to(model_dir)))
        archive.replace(model_dir / "model.tar.gz")
    with np.load(processed / "test" / "data.npz") as split:
        images, labels, names = split["images"], split["labels"], split["filenames"]
    order = np.random.default_rng(seed).permutation(len(images))
    baseline, traffic = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    baseline_dir = work / "baseline-split"
    baseline_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(baseline_dir / "data.npz", images=images[baseline],
                        labels=labels[baseline], filenames=names[baseline])
    # this tree's serving code (what the next artifact ships), on the trained weights
    serving = load_module("bench_serving_inference", JOBS / "inference.py")
    return {"model_dir": model_dir, "processed": processed, "serving": serving,
            "model": serving.model_fn(str(model_dir)), "baseline_dir": baseline_dir,
            "traffic_files": [DATA / str(n) for n in names[traffic]],
            "traffic_labels": labels[traffic],
            "validation": np.load(processed / "validation" / "data.npz")["images"],
            "train": np.load(processed / "train" / "data.npz")["images"]}
