"""train.py and evaluate.py on real images, run as subprocesses like the pipeline runs them."""
from __future__ import annotations

import json
import os
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import SMALL_MODEL_EPOCHS, run_job

# Each test takes tens of seconds: trains and evaluates real models.
pytestmark = pytest.mark.slow

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
    # The kept weights are the average after the last epoch, not a validation-picked epoch.
    last = history["history"][-1]
    assert history["kept_epoch"] == config["kept_epoch"] == SMALL_MODEL_EPOCHS
    assert history["validation_accuracy"] == last["validation_accuracy"] == config["validation_accuracy"]
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


def test_whitening_bias_learns_only_for_its_epochs(small_image_folder, tmp_path):
    """--whiten-bias-epochs 0 freezes the whitening layer's bias from the start: it stays at
    its initial zeros while every learned layer moves (the default learns it for 3 epochs,
    which the whitening test above sees as a non-zero bias)."""
    processed = tmp_path / "processed"
    run_job("preprocess.py", "--input-dir", small_image_folder(per_class=60), "--output-dir",
            processed)
    run_job("train.py", "--train", processed / "train", "--validation", processed / "validation",
            "--model-dir", tmp_path / "model", "--output-data-dir", tmp_path / "output",
            "--epochs", "2", "--width", "8", "--whiten-bias-epochs", "0")
    state = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    assert torch.equal(state["features.0.bias"], torch.zeros_like(state["features.0.bias"]))
    assert state["features.3.0.weight"].abs().sum() > 0
    history = json.loads((tmp_path / "output" / "training_history.json").read_text())
    assert history["hyperparameters"]["whiten_bias_epochs"] == 0


@pytest.fixture(scope="module")
def train_module(jobs_dir):
    """train.py imported as a module (it imports its sibling job scripts by name)."""
    import importlib.util
    import sys
    siblings = ("inference", "scones_net", "evaluate")
    saved = {name: sys.modules.pop(name) for name in siblings if name in sys.modules}
    sys.path.insert(0, str(jobs_dir))
    try:
        spec = importlib.util.spec_from_file_location("train_under_test", jobs_dir / "train.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(jobs_dir))
        for name in siblings:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return module


@pytest.fixture(scope="module")
def served_small_model(small_model_tar, tmp_path_factory):
    import importlib.util
    extracted = tmp_path_factory.mktemp("calibration-artifact")
    with tarfile.open(small_model_tar) as tar:
        tar.extractall(extracted, filter="data")
    spec = importlib.util.spec_from_file_location("calibration_inference", extracted / "code" / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    return inference, inference.model_fn(str(extracted))


def test_artifact_threshold_is_what_the_validation_split_says(small_training_run, served_small_model):
    """model_config.json's threshold, coverage and precision are reproduced by serving the
    validation split through the artifact: the threshold means what the config says."""
    inference, model = served_small_model
    config = model.config
    selection = config["threshold_selection"]
    validation = np.load(small_training_run["processed"] / "validation" / "data.npz")
    probabilities = inference.predict_batch(model, validation["images"])
    passing = probabilities.max(axis=1) >= config["confidence_threshold"]
    correct = probabilities.argmax(axis=1) == validation["labels"]
    assert passing.sum() == selection["validation_passing"]
    assert passing.mean() == pytest.approx(selection["validation_coverage"])
    assert correct[passing].mean() == pytest.approx(selection["validation_precision"])
    assert selection["target_precision"] == 0.98
    if selection["target_met"]:
        assert correct[passing].mean() >= 0.98 and passing.sum() >= selection["min_passing"]
    else:  # the stated fallback: no threshold passing enough images is more precise
        confidence = probabilities.max(axis=1)
        for lower in np.unique(confidence):
            passes = confidence >= lower
            if passes.sum() >= min(selection["min_passing"], len(passes)):
                assert correct[passes].mean() <= correct[passing].mean()
    calibration = config["calibration"]
    assert calibration["validation_nll_after"] <= calibration["validation_nll_before"] + 1e-9


@pytest.mark.parametrize("reachable", ["by all images", "by the most confident ones"])
def test_chosen_threshold_is_the_lowest_that_meets_the_target(train_module, small_training_run,
                                                              served_small_model, reachable):
    """On the small model's real validation predictions, for targets they can reach."""
    inference, model = served_small_model
    validation = np.load(small_training_run["processed"] / "validation" / "data.npz")
    probabilities = inference.predict_batch(model, validation["images"])
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == validation["labels"]
    min_passing = 10
    if reachable == "by all images":
        target = correct.mean()
    else:
        target = correct[np.argsort(-confidence, kind="mergesort")[:min_passing]].mean()
    chosen = train_module.choose_threshold(confidence, correct, target, min_passing=min_passing)
    threshold = chosen["confidence_threshold"]
    passing = confidence >= threshold
    assert chosen["target_met"]
    assert correct[passing].mean() >= target and passing.sum() >= min_passing
    assert correct[passing].mean() == pytest.approx(chosen["validation_precision"])
    assert passing.sum() == chosen["validation_passing"]
    # Lowest: every lower threshold lets through a set that misses the target.
    for lower in np.unique(confidence[confidence < threshold]):
        assert correct[confidence >= lower].mean() < target


def test_choose_threshold_guards_small_samples_and_falls_back(train_module):
    confidence = np.linspace(0.99, 0.5, 40)
    correct = np.ones(40, dtype=bool)
    correct[[0, 25, 30]] = False  # the single most confident image is wrong
    chosen = train_module.choose_threshold(confidence, correct, 0.95, min_passing=20)
    # 24 of the top 25 right (0.96); adding the 26th (wrong) drops to 24/26 = 0.923.
    assert chosen["target_met"] and chosen["validation_passing"] == 25
    assert confidence[24] > chosen["confidence_threshold"] > confidence[25]
    # 0.99 is out of reach: the fallback keeps the most precise threshold passing >= 20
    # (25 images at 0.96), not the 20 most confident (0.95).
    unreachable = train_module.choose_threshold(confidence, correct, 0.99, min_passing=20)
    assert not unreachable["target_met"] and unreachable["validation_passing"] == 25
    assert unreachable["validation_precision"] == pytest.approx(0.96)
    assert "highest validation precision" in unreachable["rule"]
    assert (confidence >= unreachable["confidence_threshold"]).sum() == 25


def test_evaluation_reports_calibration_and_selective_accuracy(small_training_run, small_model_tar,
                                                               served_small_model, tmp_path):
    inference, model = served_small_model
    output = tmp_path / "evaluation"
    result = run_job("evaluate.py", "--model-dir", small_model_tar.parent,
                     "--test-dir", small_training_run["processed"] / "test", "--output-dir", output)
    custom = json.loads((output / "evaluation.json").read_text())["custom_metrics"]
    test = np.load(small_training_run["processed"] / "test" / "data.npz")
    logits = inference.tta_logits(model, test["images"])
    calibrated = inference.predict_batch(model, test["images"])
    raw = inference.probabilities_from_logits(logits, 1.0)

    def ece(probabilities):  # 15 equal-width bins, written out independently of evaluate.py
        confidence, right = probabilities.max(1), probabilities.argmax(1) == test["labels"]
        total = 0.0
        for low, high in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:]):
            in_bin = (confidence > low) & (confidence <= high)
            if in_bin.any():
                total += in_bin.sum() * abs(right[in_bin].mean() - confidence[in_bin].mean())
        return total / len(confidence)

    calibration = custom["calibration"]
    assert calibration["ece_bins"] == 15
    assert calibration["temperature"] == pytest.approx(model.config["temperature"])
    assert calibration["ece_before_calibration"]["value"] == pytest.approx(ece(raw), abs=1e-6)
    assert calibration["ece_after_calibration"]["value"] == pytest.approx(ece(calibrated), abs=1e-6)
    selective = custom["selective_prediction"]
    threshold = model.config["confidence_threshold"]
    assert selective["confidence_threshold"] == threshold
    passing = calibrated.max(1) >= threshold
    assert selective["passing_images"] == passing.sum() and selective["test_images"] == len(passing)
    assert selective["coverage"]["value"] == pytest.approx(passing.mean())
    if passing.any():
        expected = (calibrated.argmax(1) == test["labels"])[passing].mean()
        assert selective["selective_accuracy"]["value"] == pytest.approx(expected)
    assert "ECE" in result.stdout
    with Image.open(output / "reliability_diagram.png") as png:
        assert png.format == "PNG" and png.size[0] >= 500 and png.size[1] >= 500


def _jobs_module(jobs_dir, name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", jobs_dir / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _normalised(scones_net, images, config):
    return scones_net.normalise(torch.from_numpy(images), torch.tensor(config["mean"]),
                                torch.tensor(config["std"]))


def test_saved_weights_are_the_ones_validated_each_epoch(small_training_run, jobs_dir):
    """model.pt holds the weight average whose validation accuracy the last epoch line
    reports (the averaged net is what is validated, kept and served)."""
    scones_net = _jobs_module(jobs_dir, "scones_net")
    model_dir = small_training_run["model_dir"]
    config = json.loads((model_dir / "model_config.json").read_text())
    net = scones_net.SconesNet(num_classes=2, width=config["width"])
    net.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
    validation = np.load(small_training_run["processed"] / "validation" / "data.npz")
    with torch.inference_mode():
        predicted = net.eval()(_normalised(scones_net, validation["images"], config)).argmax(1)
    accuracy = float((predicted.numpy() == validation["labels"]).mean())
    assert accuracy == pytest.approx(config["validation_accuracy"], abs=1e-9)


def test_whitening_filters_come_from_the_training_split_and_stay_fixed(small_training_run,
                                                                       jobs_dir):
    """The artifact's first layer is exactly the whitening computed from the training images
    (training never moves it), and it whitens them: 2x2 patches come out decorrelated."""
    scones_net = _jobs_module(jobs_dir, "scones_net")
    model_dir = small_training_run["model_dir"]
    config = json.loads((model_dir / "model_config.json").read_text())
    state = torch.load(model_dir / "model.pt", weights_only=True)
    train_images = np.load(small_training_run["processed"] / "train" / "data.npz")["images"]
    x = _normalised(scones_net, train_images, config)
    fresh = scones_net.SconesNet(num_classes=2, width=config["width"])
    fresh.init_whitening(x)
    # Compared as W^T W (the inverse patch covariance it encodes): eigenvectors of nearly
    # equal eigenvalues may turn or change sign between two computations, W^T W does not.
    filters = scones_net.WHITENING_FILTERS
    saved = state["features.0.weight"].reshape(2 * filters, filters).double()
    expected = fresh.whiten.weight.reshape(2 * filters, filters).double()
    assert torch.equal(saved[filters:], -saved[:filters])
    assert torch.allclose(saved.T @ saved, expected.T @ expected, rtol=1e-3, atol=1e-3)
    assert not torch.equal(state["features.0.bias"], torch.zeros_like(state["features.0.bias"]))

    with torch.no_grad():
        responses = torch.nn.functional.conv2d(x, fresh.whiten.weight[:scones_net.WHITENING_FILTERS])
    responses = responses.permute(1, 0, 2, 3).reshape(scones_net.WHITENING_FILTERS, -1).double()
    covariance = torch.cov(responses)
    off_diagonal = covariance - torch.diag(torch.diag(covariance))
    assert off_diagonal.abs().max() < 0.02
    # Unit variance along every direction the images vary in; epsilon only damps the
    # nearly flat ones (variance / (variance + epsilon)).
    assert (torch.diag(covariance) <= 1 + 1e-3).all()
    assert (torch.diag(covariance) > 0.5).sum() >= scones_net.WHITENING_FILTERS - 2


def test_served_views_are_the_image_and_its_mirror(served_small_model, small_training_run,
                                                  jobs_dir):
    """What is served is the trained net (the saved weights, BatchNorm and all) on each image
    and its mirror, though the served copy has its BatchNorm folded into the convolutions."""
    inference, model = served_small_model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.net.modules())
    scones_net = _jobs_module(jobs_dir, "scones_net")
    trained = scones_net.SconesNet(num_classes=2, width=model.config["width"])
    trained.load_state_dict(torch.load(small_training_run["model_dir"] / "model.pt",
                                       weights_only=True))
    trained.eval()
    images = np.load(small_training_run["processed"] / "test" / "data.npz")["images"][:8]
    logits = inference.tta_logits(model, images)
    x = model._normalise(torch.from_numpy(images), model.mean, model.std)
    with torch.inference_mode():
        assert np.allclose(logits[:, 0], trained(x).numpy(), atol=1e-5)
        assert np.allclose(logits[:, 1], trained(x.flip(3)).numpy(), atol=1e-5)


def test_weight_average_update(train_module):
    """averaged <- decay * averaged + (1 - decay) * net for weights and BatchNorm statistics;
    the integer batch counter is copied; decay 0 keeps the net's last weights."""
    averaged, net = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        averaged.weight.fill_(1.0)
        net.weight.fill_(3.0)
        net.running_mean.fill_(2.0)
        net.num_batches_tracked.fill_(7)
    train_module.update_average(averaged, net, 0.75)
    assert torch.allclose(averaged.weight, torch.full((3,), 1.5))
    assert torch.allclose(averaged.running_mean, torch.full((3,), 0.5))
    assert int(averaged.num_batches_tracked) == 7
    train_module.update_average(averaged, net, 0.0)
    assert torch.equal(averaged.weight, net.weight) and torch.equal(averaged.running_mean, net.running_mean)


def test_cutmix_pastes_one_box_and_weights_the_label_by_what_is_left(train_module):
    """CutMix: a box of the partner image replaces the same box of the image; the returned
    weight of the image's own label is the share of its pixels left (the box rounded to
    whole pixels), and the input batch is not changed in place."""
    images, partners = torch.zeros(4, 3, 32, 32), torch.ones(4, 3, 32, 32)
    generator = torch.Generator().manual_seed(3)
    mixed, kept = train_module.cutmix(images, partners, 0.75, generator)
    assert images.eq(0).all()
    pasted = mixed.eq(1)
    assert pasted.float().mean().item() == pytest.approx(1 - kept) and kept == pytest.approx(0.75)
    rows, cols = pasted[0, 0].any(dim=1), pasted[0, 0].any(dim=0)
    assert rows.sum() == 16 and cols.sum() == 16  # one 16 x 16 box, the same in every image
    assert pasted.eq(pasted[:1, :1]).all()
    untouched, kept = train_module.cutmix(images, partners, 1.0, generator)
    assert kept == 1.0 and torch.equal(untouched, images)


@pytest.mark.parametrize("setting, expected", [
    ("3", 3), (None, "cores"), ("", "cores"), ("zero", "cores"), ("0", "cores")])
def test_training_threads_follow_omp_num_threads_else_every_core(train_module, monkeypatch,
                                                                  setting, expected):
    if setting is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", setting)
    cores = len(os.sched_getaffinity(0))
    assert train_module.training_threads() == (cores if expected == "cores" else expected)
