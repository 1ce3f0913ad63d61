"""Shared fixtures: the sample data, the job scripts, and one real small trained model.

`small_model_tar` runs the real preprocess.py and train.py (as subprocesses, the way the
local runner and SageMaker run them) on ~200 real images for 8 epochs (a few seconds), and tars the
model dir the way SageMaker does. It is built once per test session.
"""
from __future__ import annotations

import os

# `make test` runs several test files at once (pytest-xdist) on 2 cores, and each may start
# a training or serving job: one torch thread per process, or their spinning workers would
# take several times the CPU. Set before torch is imported here or in any job subprocess.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import importlib.util
import tarfile
from pathlib import Path

import pytest

from helpers import (JOBS_DIR, REPO_ROOT, SAMPLE_DATA_DIR, SMALL_MODEL_EPOCHS,
                     SMALL_MODEL_IMAGES_PER_CLASS, SMALL_MODEL_WIDTH, check_sample_data,
                     copy_image_subset, run_job, scones, tar_model_dir)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def jobs_dir() -> Path:
    return JOBS_DIR


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """The shared real images: <class>/<cifar file name>.png for bicycle and motorcycle.
    Missing, the tests that need them skip on a developer's machine, and fail under CI=true
    (where a skip would pass a run that tested nothing of them)."""
    check_sample_data()
    return SAMPLE_DATA_DIR


@pytest.fixture
def small_image_folder(sample_data_dir, tmp_path):
    """Factory: small_image_folder(per_class=20) -> a fresh image-folder data set of real images."""
    def make(per_class: int = 20, name: str = "images") -> Path:
        return copy_image_subset(sample_data_dir, tmp_path / name, per_class)
    return make


@pytest.fixture(scope="session")
def small_training_run(sample_data_dir, tmp_path_factory) -> dict[str, Path]:
    """preprocess + train on 200 real images, 8 epochs: the folders they wrote."""
    root = tmp_path_factory.mktemp("small-model")
    images = copy_image_subset(sample_data_dir, root / "images", SMALL_MODEL_IMAGES_PER_CLASS)
    processed = root / "processed"
    run_job("preprocess.py", "--input-dir", images, "--output-dir", processed)
    model_dir, output_data_dir = root / "model", root / "output-data"
    train_result = run_job("train.py", "--train", processed / "train", "--validation", processed / "validation",
                           "--model-dir", model_dir, "--output-data-dir", output_data_dir,
                           "--epochs", SMALL_MODEL_EPOCHS, "--width", SMALL_MODEL_WIDTH)
    archive = tar_model_dir(model_dir, root / "artifact" / "model.tar.gz")
    return {"root": root, "images": images, "processed": processed, "model_dir": model_dir,
            "output_data_dir": output_data_dir, "model_tar": archive,
            "train_stdout": train_result.stdout}


@pytest.fixture(scope="session")
def small_model_tar(small_training_run) -> Path:
    """Path of a real, small, trained model.tar.gz (model.pt, model_config.json, code/...).

    Treat it as read-only: it is shared by the whole session.
    """
    return small_training_run["model_tar"]


@pytest.fixture
def aws_credentials(monkeypatch):
    """Fake credentials and a region, so boto3 (under moto) never looks for real ones."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def run_scones():
    """The one runner of the real CLI (helpers.scones): run_scones(*args, workspace=PATH,
    settings={KEY: VALUE}, cwd=None, env=None) -> CompletedProcess."""
    return scones


@pytest.fixture(scope="session")
def served_model(small_model_tar, tmp_path_factory):
    """(the artifact's own code/inference.py as a module, its model_fn model): the small
    model served as SageMaker's container serves it. Shared by the whole session."""
    extracted = tmp_path_factory.mktemp("served-artifact")
    with tarfile.open(small_model_tar) as tar:
        tar.extractall(extracted, filter="data")
    spec = importlib.util.spec_from_file_location("artifact_inference_under_test",
                                                  extracted / "code" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.model_fn(str(extracted))
