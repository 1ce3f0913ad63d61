"""Baseline for monitoring: what the endpoint should see, measured on held-out data.

SageMaker Processing step after Evaluate (defaults are the container's /opt/ml/processing
paths), the local runner, or by hand:

    python pipelines/jobs/baseline.py --model-dir DIR_WITH_MODEL_TAR --data-dir SPLIT_DIR \\
        --output-dir OUT [--profile-dir DIR_WITH_profile.py] [--comparison-threshold 0.2]

Loads model.tar.gz through its own serving code (code/inference.py, as evaluate.py does),
predicts the split's images (preprocess.py's data.npz), and writes SageMaker Model Monitor's
statistics.json + constraints.json of the monitored features (see profile.py), plus
ood_reference.json for the out-of-distribution score. The feature code is profile.py from
workflow/monitoring, shipped next to this script as a processing input, so the baseline and
the monitor measure with the same code, on the same representation: the decoded image as
the model sees it (the split's images are preprocess.py's decoding of the raw files, with
the serving decoder; the monitor decodes each captured request the same way), never the raw
request's colour mode or size.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PROFILE_DIRS = (Path("/opt/ml/processing/input/profile"),
                Path(__file__).resolve().parents[2] / "workflow" / "monitoring")


class BaselineError(Exception):
    """Bad input (no artifact, broken archive, no split); the message says which."""


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_profile(profile_dir: Path | None):
    for folder in ([profile_dir] if profile_dir else PROFILE_DIRS):
        if (folder / "profile.py").is_file():
            return load_module("scones_monitoring_profile", folder / "profile.py")
    raise BaselineError("profile.py (the monitored features) not found in "
                        + ", ".join(str(p) for p in ([profile_dir] if profile_dir else PROFILE_DIRS)))


def predict(model_dir: Path, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    archive = model_dir / "model.tar.gz"
    if not archive.is_file():
        raise BaselineError(f"{archive}: model artifact not found")
    with tempfile.TemporaryDirectory(prefix="scones-baseline-") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BaselineError(f"{archive}: not a readable model.tar.gz: {exc}") from None
        code = Path(tmp) / "code" / "inference.py"
        if not code.is_file():
            raise BaselineError(f"{archive}: the artifact has no code/inference.py")
        serving = load_module("artifact_inference", code)
        model = serving.model_fn(tmp)
        return serving.predict_batch(model, images), list(model.class_names)


def run(model_dir: Path, data_dir: Path, output_dir: Path, profile_dir: Path | None = None,
        comparison_threshold: float = 0.2) -> dict:
    profile = load_profile(profile_dir)
    path = data_dir / "data.npz"
    if not path.is_file():
        raise BaselineError(f"{path}: split not found (expected preprocess.py's data.npz)")
    with np.load(path, allow_pickle=False) as npz:
        images = npz["images"]
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) < 2:
        raise BaselineError(f"{path}: expected N x H x W x 3 images (N >= 2), got {images.shape}")
    probabilities, class_names = predict(model_dir, images)
    vectors = np.array([profile.describe(i) for i in images])
    reference = profile.fit_ood_reference(vectors)
    rows = profile.image_rows(images, None, probabilities, class_names, reference,
                              scores=profile.cross_fitted_ood_scores(vectors))
    statistics = profile.statistics(rows)
    output_dir.mkdir(parents=True, exist_ok=True)
    profile.write_json(output_dir / profile.OOD_FILE, reference)
    profile.write_json(output_dir / profile.CONSTRAINTS_FILE,
                       profile.constraints(statistics, comparison_threshold))
    profile.write_json(output_dir / profile.STATISTICS_FILE, statistics)  # last: marks done
    return statistics


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--model-dir", type=Path, default=Path("/opt/ml/processing/model"),
                        help="folder holding model.tar.gz")
    parser.add_argument("--data-dir", type=Path, default=Path("/opt/ml/processing/data"),
                        help="folder holding the held-out split's data.npz")
    parser.add_argument("--output-dir", type=Path, default=Path("/opt/ml/processing/baseline"))
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="folder holding profile.py (default: the processing input, "
                             "else the repository's workflow/monitoring)")
    parser.add_argument("--comparison-threshold", type=float, default=0.2,
                        help="smallest drift distance that counts (constraints.json)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        statistics = run(args.model_dir, args.data_dir, args.output_dir, args.profile_dir,
                         args.comparison_threshold)
    except BaselineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    means = {f["name"]: round(f["numerical_statistics"]["mean"], 4)
             for f in statistics["features"] if "numerical_statistics" in f}
    print(f"baseline of {statistics['dataset']['item_count']} images: {means}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
