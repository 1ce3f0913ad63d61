"""The test suite's own helpers (tests/helpers.py)."""
from __future__ import annotations

import pytest

import helpers


def test_missing_sample_data_skips_on_a_developer_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(helpers, "SAMPLE_DATA_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="sample data not found"):
        helpers.check_sample_data()


def test_missing_sample_data_fails_loudly_under_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(helpers, "SAMPLE_DATA_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true, so this fails"):
        helpers.check_sample_data()


def test_present_sample_data_neither_skips_nor_fails(tmp_path, monkeypatch):
    for name in helpers.CLASSES:
        (tmp_path / name).mkdir()
    monkeypatch.setattr(helpers, "SAMPLE_DATA_DIR", tmp_path)
    monkeypatch.setenv("CI", "true")
    helpers.check_sample_data()


def test_the_cli_runner_passes_the_workspace_and_settings(tmp_path):
    bad = helpers.scones("registry", "list", workspace=tmp_path / "ws",
                         settings={"training.epochs": "zz"}, timeout=120)
    assert bad.returncode == 2 and "training.epochs must be an integer" in bad.stderr
    listed = helpers.scones("registry", "list", workspace=tmp_path / "ws", timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert (tmp_path / "ws").is_dir()
