"""Helpers of the Studio's tests: a real `scones ui` process on 127.0.0.1."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = os.environ.get("SCONES_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SCONES_CHROMEDRIVER", "/usr/bin/chromedriver")
# Screenshots of each page land here too when set (docs/ui/ is made from them).
SHOTS_DIR = os.environ.get("SCONES_UI_SCREENSHOTS")


@dataclass
class Studio:
    url: str            # http://127.0.0.1:PORT
    token: str
    process: subprocess.Popen
    workspace: Path

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1]


def start_studio(workspace: Path, *settings: str, env_name: str = "local",
                 token: str = "test-token-0123456789abcdef",
                 extra_env: dict[str, str] | None = None) -> Studio:
    """`scones ui --port 0` on the workspace; returns once it printed its URL."""
    args = [sys.executable, "-m", "app.cli.main", "ui", "--port", "0", "--env", env_name,
            "--set", f"local.workspace={workspace}"]
    for item in settings:
        args += ["--set", item]
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "SCONES_UI_TOKEN": token,
                                    "SAGEMAKER_SUPPRESS_V2_WARNING": "1", **(extra_env or {})})
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "?token=" in line:
            url = line.split(" at ", 1)[1].split("/?token=")[0].strip()
            return Studio(url, token, process, workspace)
    process.kill()
    raise AssertionError("scones ui did not print its URL:\n" + "".join(lines))


def stop_studio(studio: Studio) -> None:
    studio.process.terminate()
    try:
        studio.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        studio.process.kill()


def copy_images(source: Path, destination: Path, per_class: int) -> Path:
    """The first `per_class` images of each class folder of the shared data set."""
    for name in ("bicycle", "motorcycle"):
        (destination / name).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / name).glob("*.png"))[:per_class]:
            shutil.copy2(path, destination / name / path.name)
    return destination
