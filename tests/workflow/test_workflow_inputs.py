"""`workflow run --images DIR`: the files of the named folder, and nothing outside it."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from scones.config import load_config
from scones.errors import SconesError
from workflow.run import images_from_options

SECRET = b"root:$6$not-for-your-eyes:19000:0:99999:7:::\n"


@pytest.fixture
def config(tmp_path):
    return load_config("local", {"local.workspace": str(tmp_path / "ws")})


@pytest.fixture
def folder(tmp_path, sample_data_dir):
    images = tmp_path / "photos"
    (images / "sub").mkdir(parents=True)
    for index, png in enumerate(sorted((sample_data_dir / "bicycle").glob("*.png"))[:2]):
        shutil.copy(png, images / ("sub" if index else ".") / png.name)
    return images


def test_links_inside_the_folder_are_followed(config, folder):
    first = sorted(folder.glob("*.png"))[0]
    (folder / "same.png").symlink_to(first)
    (folder / "again").symlink_to(folder / "sub", target_is_directory=True)
    names = sorted(s.path.name for s in images_from_options(config, images=str(folder)))
    assert names == sorted([first.name, first.name, *(p.name for p in (folder / "sub").iterdir())])


def test_a_link_out_of_the_folder_is_refused_by_name_without_reading_it(config, folder,
                                                                        tmp_path):
    outside = tmp_path / "shadow"
    outside.write_bytes(SECRET)
    (folder / "sub" / "innocent.png").symlink_to(outside)
    (folder / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(SconesError) as refused:
        images_from_options(config, images=str(folder))
    message = str(refused.value)
    assert f"{folder / 'sub' / 'innocent.png'}: a symbolic link to outside the folder; " \
           "not read" in message
    assert f"{folder / 'elsewhere'}: a symbolic link to outside the folder" in message
    assert "root:" not in message and "not-for-your-eyes" not in message


def test_the_cli_refuses_the_link_and_uploads_nothing(config, folder, tmp_path):
    outside = tmp_path / "shadow"
    outside.write_bytes(SECRET)
    (folder / "passwords.png").symlink_to(outside)
    result = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "workflow", "run", "--images", str(folder),
         "--set", f"local.workspace={config.local.workspace}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "passwords.png: a symbolic link to outside the folder; not read" in result.stderr
    assert "root:" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    uploaded = [p for p in config.local.workspace.rglob("*") if p.is_file()
                and SECRET in p.read_bytes()] if config.local.workspace.exists() else []
    assert uploaded == []


def test_a_big_folder_is_pointed_at_the_bulk_workflow(tmp_path, run_scones):
    big = tmp_path / "big"
    big.mkdir()
    for n in range(1001):
        (big / f"{n:05d}.png").write_bytes(b"")
    done = run_scones("workflow", "run", "--images", str(big), "--endpoint-idle-minutes", "0",
                      workspace=tmp_path / "ws", timeout=300)
    assert "note: 1001 images" in done.stderr and "--prefix s3://" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
