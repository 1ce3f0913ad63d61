"""Shared fixtures: the sample data, the job scripts, and one real small trained model.

`small_model_tar` runs the real preprocess.py and train.py (as subprocesses, the way the
local runner and SageMaker run them) on ~200 real images for 8 epochs (a few seconds), and tars the
model dir the way SageMaker does. It is built once per test session.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
JOBS_DIR = REPO_ROOT / "pipelines" / "jobs"
SAMPLE_DATA_DIR = REPO_ROOT.parent / "shared" / "datasets" / "scones-cifar100" / "train"
CLASSES = ("bicycle", "motorcycle")
SMALL_MODEL_IMAGES_PER_CLASS = 100
SMALL_MODEL_EPOCHS = 8
SMALL_MODEL_WIDTH = 8


def run_job(script: str, *args, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run pipelines/jobs/<script> with this interpreter; on failure show its output."""
    result = subprocess.run([sys.executable, str(JOBS_DIR / script), *map(str, args)],
                            capture_output=True, text=True, env={**os.environ, **(env or {})},
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\n--- stdout\n{result.stdout}"
                             f"\n--- stderr\n{result.stderr}")
    return result


def copy_image_subset(source: Path, destination: Path, per_class: int) -> Path:
    """The first `per_class` images (by name) of each class folder, copied to destination."""
    for name in CLASSES:
        (destination / name).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / name).glob("*.png"))[:per_class]:
            shutil.copy2(path, destination / name / path.name)
    return destination


def tar_model_dir(model_dir: Path, archive: Path) -> Path:
    """model.tar.gz with the model dir's contents at its root, as SageMaker packs /opt/ml/model."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            if "__pycache__" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return archive


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def jobs_dir() -> Path:
    return JOBS_DIR


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """The shared real images: <class>/<cifar file name>.png for bicycle and motorcycle."""
    if not all((SAMPLE_DATA_DIR / name).is_dir() for name in CLASSES):
        pytest.skip(f"sample data not found at {SAMPLE_DATA_DIR} "
                    f"(expected ../shared/datasets/scones-cifar100/train next to the repo)")
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


def register_model(config, model_tar: Path | bytes, url: str | None = None, **fields) -> dict:
    """Put a model.tar.gz into the workspace's object store (at `url`) and register it, as
    the pipeline's RegisterModel step does. Returns the registered package."""
    from scones.backend import backend_for

    backend = backend_for(config)
    url = url or f"s3://{config.aws.bucket}/models/{len(backend.registry().list_packages()) + 1}/model.tar.gz"
    data = model_tar if isinstance(model_tar, bytes) else Path(model_tar).read_bytes()
    backend.object_store().write_bytes(url, data)
    fields.setdefault("InferenceSpecification", {"Containers": [{"ModelDataUrl": url}]})
    return backend.registry().register(**fields)


@pytest.fixture
def aws_credentials(monkeypatch):
    """Fake credentials and a region, so boto3 (under moto) never looks for real ones."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def run_scones():
    """run_scones(*args, workspace=PATH, cwd=None) -> CompletedProcess of the real CLI in a
    subprocess, with the workspace set (as a user runs it)."""
    def run(*args, workspace: Path | None = None, cwd: Path | None = None,
            timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        extra = ["--set", f"local.workspace={workspace}"] if workspace is not None else []
        return subprocess.run([sys.executable, "-m", "app.cli.main", *args, *extra],
                              capture_output=True, text=True, cwd=cwd or REPO_ROOT,
                              env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
                                   **(env or {})}, timeout=timeout)
    return run


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
