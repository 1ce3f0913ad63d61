"""What tests share besides fixtures: the repository's paths, the sample data's classes,
the job runner, the small-model helpers, the model registration of the RegisterModel step, and
the one runner of the real `scones` CLI. Test modules import it (`from helpers import ...`);
conftest.py holds only fixtures."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from scones.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parent.parent
JOBS_DIR = REPO_ROOT / "pipelines" / "jobs"
SAMPLE_DATA_DIR = REPO_ROOT.parent / "shared" / "datasets" / "scones-cifar100" / "train"
CLASSES = ("bicycle", "motorcycle")
SMALL_MODEL_IMAGES_PER_CLASS = 100
SMALL_MODEL_EPOCHS = 8
SMALL_MODEL_WIDTH = 8


def check_sample_data() -> None:
    """Skip without the shared sample data, or fail under CI=true: there a missing
    ../shared is a broken checkout, and skipping would pass a run that tested none of it."""
    if all((SAMPLE_DATA_DIR / name).is_dir() for name in CLASSES):
        return
    message = (f"sample data not found at {SAMPLE_DATA_DIR} "
               f"(expected ../shared/datasets/scones-cifar100/train next to the repo)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true, so this fails instead of skipping", pytrace=False)
    pytest.skip(message)


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


def deploy_locally(config, model_tar: Path) -> None:
    """Write the endpoint state file as `scones endpoint deploy` does (the contract)."""
    path = Workspace(config.local.workspace).endpoint_state_file(config.workflow.endpoint_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "EndpointName": config.workflow.endpoint_name, "EndpointStatus": "InService",
        "ModelPackageVersion": 1, "LocalModelData": str(model_tar),
        "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 100,
                              "DestinationS3Uri": f"s3://{config.aws.bucket}/datacapture"}}))


def scones(*args, workspace: Path | str | None = None, settings: dict | None = None,
           cwd: Path | None = None, env: dict | None = None, clean_env: dict | None = None,
           stdout=subprocess.PIPE, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real CLI (`python -m app.cli.main *args`) in a subprocess, as a user runs it:
    `--set local.workspace=<workspace>` and `--set KEY=VALUE` for each of settings appended;
    env is added to this environment (or clean_env replaces it); stderr captured."""
    extra = ["--set", f"local.workspace={workspace}"] if workspace is not None else []
    for key, value in (settings or {}).items():
        extra += ["--set", f"{key}={value}"]
    environment = (clean_env if clean_env is not None else
                   {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "app.cli.main", *map(str, args), *extra],
                          stdout=stdout, stderr=subprocess.PIPE, text=True,
                          cwd=cwd or REPO_ROOT, env=environment, timeout=timeout)


def sitecustomize_env(folder: Path, source: str) -> dict[str, str]:
    """Write `source` as sitecustomize.py in a new `folder`; the environment entries that
    make a child Python run it at start-up, before the code under test (e.g. to make a
    clean-up hang on purpose)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(source)
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
