"""The project as a newcomer meets it: the layer rules hold, and `pip install .` (not
editable) gives a working `scones` outside the source tree."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    """.importlinter: the layers contract (app > infra > pipelines | workflow > scones > lambdas),
    the twin behind the seam, lambdas standalone. A broken contract names the import chain."""
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports")),
                           "--config", str(REPO / ".importlinter")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("scones_mlops-*.whl")
    return path


def test_wheel_carries_configs_and_job_scripts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"scones/configs/base.yaml", "scones/configs/local.yaml",
            "scones/configs/aws.yaml"} <= names
    assert {f"pipelines/jobs/{job}.py" for job in ("preprocess", "train", "evaluate",
                                                   "inference", "scones_net")} <= names
    assert "infra/sagemaker-project.json" in names
    assert not any(name.startswith(("tests/", "configs/")) for name in names)


def test_installed_wheel_runs_outside_the_repository(wheel, tmp_path, sample_data_dir):
    """`pip install` of the wheel into a fresh venv (its dependencies borrowed from this
    environment through a .pth, so nothing is downloaded) gives a `scones` that works from
    a folder outside the repository."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=180)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print("
                                "sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # This environment's packages; its editable install of this project is not picked up
    # (a .pth line adds a folder to sys.path but runs no .pth files inside it).
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                                "--no-index", str(wheel)], capture_output=True, text=True,
                               cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""},
                               timeout=180)  # away from the repo, whose build's egg-info
                                             # would read as "already installed"
    assert installed.returncode == 0, installed.stderr[-3000:]
    scones = venv / "bin" / "scones"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1", "PYTHONPATH": ""}
    version = subprocess.run([str(scones), "--version"], capture_output=True, text=True,
                             cwd=elsewhere, env=env, timeout=120)
    assert version.stdout.startswith("scones "), version.stderr
    where = subprocess.run([str(python), "-c", "import scones; print(scones.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env, timeout=60)
    assert where.stdout.strip().startswith(str(site)), where.stdout  # not the source tree
    # The definition names a data snapshot, so it needs images: a few of the real ones.
    for class_dir in sorted(p for p in sample_data_dir.iterdir() if p.is_dir()):
        (elsewhere / "data" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.glob("*.png"))[:2]:
            (elsewhere / "data" / class_dir.name / image.name).write_bytes(image.read_bytes())
    done = subprocess.run([str(scones), "pipeline", "definition", "--env", "local",
                           "--set", "data.input_url=data"],
                          capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"Version": "2020-12-01"' in done.stdout
    # the job code the definition points at was uploaded into the workspace under cwd
    assert list((elsewhere / ".scones" / "s3").rglob("sourcedir.tar.gz")) or list(
        (elsewhere / ".scones" / "s3").rglob("*.py")), "no code uploads in the workspace"
