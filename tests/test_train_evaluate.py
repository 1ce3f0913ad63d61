"""train.py and evaluate.py on real images, run as subprocesses like the pipeline runs them."""
from __future__ import annotations

import json
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_MODEL_EPOCHS, run_job

# The exact shape the pipeline's metric_definitions parse.
EPOCH_LINE = re.compile(
    r"^epoch (\d+)/(\d+) train_loss=(\d+\.\d{4}) train_accuracy=(\d\.\d{4}) "
    r"validation_loss=(\d+\.\d{4}) validation_accuracy=(\d\.\d{4}) seconds=(\d+\.\d)$")


def test_train_prints_one_metric_line_per_epoch(small_training_run):
    lines = [l for l in small_training_run["train_stdout"].splitlines() if l.startswith("epoch ")]
    assert len(lines) == SMALL_MODEL_EPOCHS
    for number, line in enumerate(lines, start=1):
        match = EPOCH_LINE.match(line)
        assert match, f"epoch line has the wrong shape: {line!r}"
        assert int(match.group(1)) == number and int(match.group(2)) == SMALL_MODEL_EPOCHS


def test_train_writes_the_documented_files(small_training_run):
    model_dir, output_dir = small_training_run["model_dir"], small_training_run["output_data_dir"]
    config = json.loads((model_dir / "model_config.json").read_text())
    assert config["class_names"] == ["bicycle", "motorcycle"]
    assert config["architecture"] == "SconesNet" and config["image_size"] == 32
    assert len(config["mean"]) == 3 and len(config["std"]) == 3 and all(s > 0 for s in config["std"])
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    history = json.loads((output_dir / "training_history.json").read_text())
    assert [row["epoch"] for row in history["history"]] == list(range(1, SMALL_MODEL_EPOCHS + 1))
    best = max(row["validation_accuracy"] for row in history["history"])
    assert history["best_validation_accuracy"] == best == config["best_validation_accuracy"]
    with Image.open(output_dir / "training_curves.png") as png:
        assert png.format == "PNG" and png.size[0] > 400


def test_artifact_code_is_the_repo_serving_code(small_training_run, jobs_dir):
    for name in ("inference.py", "scones_net.py"):
        assert (small_training_run["model_dir"] / "code" / name).read_bytes() == (jobs_dir / name).read_bytes()
    with tarfile.open(small_training_run["model_tar"]) as tar:
        names = set(tar.getnames())
    assert {"model.pt", "model_config.json", "code/inference.py", "code/scones_net.py"} <= names


def test_train_rejects_a_missing_channel(tmp_path):
    result = run_job("train.py", "--train", tmp_path / "nowhere", "--validation", tmp_path / "nowhere",
                     "--model-dir", tmp_path / "m", "--output-data-dir", tmp_path / "o", check=False)
    assert result.returncode == 2
    assert "error: train channel" in result.stderr and "data.npz" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_train_rejects_a_misspelt_hyperparameter(small_training_run, tmp_path):
    processed = small_training_run["processed"]
    result = run_job("train.py", "--train", processed / "train", "--validation", processed / "validation",
                     "--model-dir", tmp_path / "m", "--output-data-dir", tmp_path / "o",
                     "--epoch", "2", check=False)
    assert result.returncode == 2 and "--epoch" in result.stderr


def test_evaluate_writes_model_quality_layout_and_png(small_training_run, small_model_tar, tmp_path):
    output = tmp_path / "evaluation"
    result = run_job("evaluate.py", "--model-dir", small_model_tar.parent,
                     "--test-dir", small_training_run["processed"] / "test", "--output-dir", output)
    report = json.loads((output / "evaluation.json").read_text())
    binary = report["binary_classification_metrics"]
    accuracy = binary["accuracy"]["value"]
    assert 0.0 <= accuracy <= 1.0 and f"accuracy={accuracy:.4f}" in result.stdout
    for name in ("accuracy", "precision", "recall", "f1", "auc"):
        assert set(binary[name]) == {"value", "standard_deviation"}
    matrix = binary["confusion_matrix"]
    test_labels = np.load(small_training_run["processed"] / "test" / "data.npz")["labels"]
    assert sum(matrix[a][p] for a in "01" for p in "01") == len(test_labels)
    assert matrix["1"]["0"] + matrix["1"]["1"] == int((test_labels == 1).sum())
    correct = matrix["0"]["0"] + matrix["1"]["1"]
    assert accuracy == pytest.approx(correct / len(test_labels))
    multi = report["multiclass_classification_metrics"]
    assert multi["accuracy"]["value"] == accuracy
    assert set(multi["confusion_matrix"]) == {"bicycle", "motorcycle"}
    assert multi["per_class"]["motorcycle"]["recall"]["value"] == binary["recall"]["value"]
    with Image.open(output / "confusion_matrix.png") as png:
        assert png.format == "PNG"


def test_evaluate_matches_serving_code_predictions(small_training_run, small_model_tar, tmp_path, jobs_dir):
    """evaluate.py's accuracy equals the accuracy of the artifact's own predict_batch."""
    import importlib.util
    extracted = tmp_path / "artifact"
    with tarfile.open(small_model_tar) as tar:
        tar.extractall(extracted, filter="data")
    spec = importlib.util.spec_from_file_location("served_inference", extracted / "code" / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    model = inference.model_fn(str(extracted))
    test = np.load(small_training_run["processed"] / "test" / "data.npz")
    expected = float((inference.predict_batch(model, test["images"]).argmax(1) == test["labels"]).mean())
    run_job("evaluate.py", "--model-dir", small_model_tar.parent,
            "--test-dir", small_training_run["processed"] / "test", "--output-dir", tmp_path / "e")
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert report["binary_classification_metrics"]["accuracy"]["value"] == pytest.approx(expected)


def test_evaluate_without_artifact_is_a_clear_error(small_training_run, tmp_path):
    result = run_job("evaluate.py", "--model-dir", tmp_path, "--test-dir",
                     small_training_run["processed"] / "test", "--output-dir", tmp_path / "e", check=False)
    assert result.returncode == 2
    assert "model.tar.gz" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "e" / "evaluation.json").exists()


def test_train_runs_with_fewer_steps_than_a_learning_rate_cycle_needs(small_image_folder,
                                                                       tmp_path):
    # 96 training images in batches of 64 for 2 epochs: 4 optimiser steps, too few for
    # OneCycleLR's warm-up (it divided by zero here before).
    processed = tmp_path / "processed"
    run_job("preprocess.py", "--input-dir", small_image_folder(per_class=60), "--output-dir",
            processed)
    result = run_job("train.py", "--train", processed / "train", "--validation",
                     processed / "validation", "--model-dir", tmp_path / "model",
                     "--output-data-dir", tmp_path / "output", "--epochs", "2",
                     "--batch-size", "64", "--width", "8")
    assert result.stdout.count("\nepoch ") + result.stdout.startswith("epoch ") == 2
    assert (tmp_path / "model" / "model.pt").is_file()
