"""The closed monitoring loop on real parts: a real small model registered with the baseline
the real baseline job computed, deployed to a real endpoint process that captures real images
sent through boto3 (with InferenceIds); `monitor run` checks the capture against the baseline,
`monitor label` merges ground truth by inferenceId, and a drift alarm starts a real (tiny)
pipeline run, once per cool-down."""
from __future__ import annotations

import dataclasses
import io
import json
import subprocess
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.config import Config as BotoConfig
from PIL import Image, ImageOps

from helpers import register_model, run_job
from helpers import scones as run_scones
from scones.config import load_config
from scones.storage import LocalObjectStore

# Each test takes tens of seconds: monitoring runs that start retraining pipelines.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("bicycle", "motorcycle")
BASELINE_URL = "s3://scones-local/baselines/1"
EVALUATION_URL = "s3://scones-local/evaluations/1/evaluation.json"


@pytest.fixture(scope="module")
def baseline(small_training_run, sample_data_dir, tmp_path_factory) -> dict:
    """baseline.py and evaluate.py run on images the model never saw (100..179 per class)."""
    root = tmp_path_factory.mktemp("baseline")
    held = root / "held"
    for name in CLASSES:
        (held / name).mkdir(parents=True)
        for path in sorted((sample_data_dir / name).glob("*.png"))[100:180]:
            (held / name / path.name).write_bytes(path.read_bytes())
    run_job("preprocess.py", "--input-dir", held, "--output-dir", root / "split",
            "--validation-fraction", "0.1", "--test-fraction", "0.8")
    model_dir = small_training_run["model_tar"].parent
    run_job("baseline.py", "--model-dir", model_dir, "--data-dir", root / "split" / "test",
            "--output-dir", root / "baseline")
    run_job("evaluate.py", "--model-dir", model_dir, "--test-dir", root / "split" / "test",
            "--output-dir", root / "evaluation")
    return {"baseline": root / "baseline", "evaluation": root / "evaluation" / "evaluation.json"}


def register_with_baseline(config, model_tar: Path, baseline: dict) -> dict:
    store = LocalObjectStore(config.local.workspace / "s3")
    for path in baseline["baseline"].iterdir():
        store.write_bytes(f"{BASELINE_URL}/{path.name}", path.read_bytes())
    store.write_bytes(EVALUATION_URL, baseline["evaluation"].read_bytes())

    def source(url):
        return {"ContentType": "application/json", "S3Uri": url}

    data_quality = {"Statistics": source(f"{BASELINE_URL}/statistics.json"),
                    "Constraints": source(f"{BASELINE_URL}/constraints.json")}
    return register_model(
        config, model_tar, ModelApprovalStatus="Approved",
        ModelMetrics={"ModelQuality": {"Statistics": source(EVALUATION_URL)},
                      "ModelDataQuality": data_quality},
        DriftCheckBaselines={"ModelDataQuality": data_quality})


@pytest.fixture
def deployed(tmp_path, small_model_tar, baseline, small_image_folder):
    from workflow.stages import deploy_model_package

    config = load_config("local", overrides={
        "local.workspace": str(tmp_path / "ws"),
        # what a retraining run trains on: small and quick
        "data.input_url": str(small_image_folder(per_class=40)),
        "training.epochs": 1, "training.batch_size": 16})
    register_with_baseline(config, small_model_tar, baseline)
    deploy_model_package(config, 1)
    return config


def raw_form(path: Path, i: int) -> bytes:
    """One held-out picture as a client sends it, like the training data: the RGBA PNG file
    itself, a JPEG of it, or a larger photo of it (JPEG or PNG)."""
    kind = i % 4
    if kind == 0:
        return path.read_bytes()
    image = Image.open(path).convert("RGB")
    if kind in (2, 3):
        image = image.resize((640, 480) if kind == 2 else (320, 240), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if kind in (1, 2) else "PNG", quality=92)
    return buffer.getvalue()


def traffic(sample_data_dir, kind: str) -> list[tuple[str, bytes]]:
    """(true class, bytes) of 2 x 60 images the model never saw, as sent: clean (raw files,
    JPEGs and larger photos of them), or the same images darkened, inverted, or replaced by
    noise."""
    out = []
    rng = np.random.default_rng(7)
    for name in CLASSES:
        for i, path in enumerate(sorted((sample_data_dir / name).glob("*.png"))[180:240]):
            if kind == "clean":
                out.append((name, raw_form(path, i)))
                continue
            image = Image.open(path).convert("RGB")
            if kind == "dark":
                image = Image.fromarray((np.asarray(image) * 0.35).astype(np.uint8))
            elif kind == "inverted":
                image = ImageOps.invert(image)
            elif kind == "noise":
                image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            out.append((name, buffer.getvalue()))
    return out


def label_file(path: Path, answers: list[dict]) -> Path:
    """SageMaker groundTruthData records: the true class of each answered request."""
    path.write_text("".join(json.dumps({
        "groundTruthData": {"data": a["Label"], "encoding": "CSV"},
        "eventMetadata": {"eventId": a["InferenceId"]}, "eventVersion": "0"}) + "\n"
        for a in answers))
    return path


def send(endpoint, images, prefix: str) -> list[dict]:
    client = boto3.client("sagemaker-runtime", region_name="us-east-1",
                          endpoint_url=endpoint.url, aws_access_key_id="local",
                          aws_secret_access_key="local",
                          config=BotoConfig(retries={"max_attempts": 1}))
    answers = []
    for i, (label, body) in enumerate(images):
        inference_id = f"{prefix}-{i}"
        response = client.invoke_endpoint(EndpointName=endpoint.endpoint_name,
                                          ContentType="image/png", Body=body,
                                          InferenceId=inference_id)
        answers.append({"InferenceId": inference_id, "Label": label,
                        "Probabilities": json.loads(response["Body"].read())})
    return answers


def scones(config, *args) -> subprocess.CompletedProcess:
    return run_scones(*args, workspace=config.local.workspace, settings={
        "data.input_url": config.data.input_url, "training.epochs": 1,
        "training.batch_size": 16,
        # any model a 1-epoch retraining gives registers (the branch under test)
        "pipeline.accuracy_threshold": 0})


def violated(result) -> set[str]:
    return {v["feature_name"] for v in result.violations}


def test_clean_traffic_passes_drifted_traffic_names_its_features_and_starts_retraining_once(
        deployed, sample_data_dir, tmp_path):
    from scones.local.endpoint.process import EndpointProcess
    from workflow.monitoring.check import MonitorState, run_monitor

    config = deployed
    state = MonitorState(config)
    with EndpointProcess(config) as endpoint:
        send(endpoint, traffic(sample_data_dir, "clean"), "clean")
        clean = run_monitor(config)
        assert clean.summary["Records"] == 120 and clean.summary["Versions"] == {"1": 120}
        # raw RGBA PNGs, JPEGs and larger photos of held-out pictures: the monitor profiles
        # the decoded image as the model sees it, as the baseline did, so no false alarm
        assert clean.violations == [], clean.summary["Drift"]
        assert {c["FeatureName"] for c in clean.summary["Drift"]} == {
            "brightness", "contrast", "colourfulness", "ood_score", "confidence",
            "predicted_label"}
        written = json.loads((clean.out_dir / "constraint_violations.json").read_text())
        assert written == {"violations": []}

        # the next run reads only what came since: nothing new, nothing checked
        again = run_monitor(config)
        assert again.summary["Records"] == 0 and again.violations == []

        send(endpoint, traffic(sample_data_dir, "noise"), "noise")
        noise = run_monitor(config)
        assert {"ood_score", "colourfulness", "predicted_label"} <= violated(noise)

        send(endpoint, traffic(sample_data_dir, "inverted"), "inverted")
        assert "ood_score" in violated(run_monitor(config))

        dark = send(endpoint, traffic(sample_data_dir, "dark"), "dark")
        # someone labels the dusk pictures: what retraining can learn from
        labelled = scones(config, "monitor", "label",
                          str(label_file(tmp_path / "dark-labels.jsonl", dark)))
        assert labelled.returncode == 0, labelled.stderr
        drifted = scones(config, "monitor", "run", "--retrain", "--json")
    assert drifted.returncode == 0, drifted.stderr[-3000:]
    summary = json.loads(drifted.stdout)
    assert summary["Records"] == 120 and summary["Alarm"] is True
    violations = json.loads(Path(summary["ConstraintViolations"]).read_text())["violations"]
    names = {v["feature_name"] for v in violations}
    assert {"brightness", "contrast", "colourfulness"} <= names
    brightness = next(v for v in violations if v["feature_name"] == "brightness")
    assert brightness["constraint_check_type"] == "baseline_drift_check"
    assert "exceeds threshold" in brightness["description"] and "baseline" in brightness["description"]
    # a real pipeline run retrained on the next data snapshot (the current one plus the 120
    # labelled dusk pictures) and registered version 2, a different model naming its data
    retraining = summary["Retraining"]
    assert retraining["Started"] is True
    assert retraining["Status"] == "Succeeded", drifted.stderr[-3000:]
    assert retraining["ImagesAdded"] == {"bicycle": 60, "motorcycle": 60}
    from scones.backend import backend_for
    from scones.snapshots import load_snapshot

    registry = backend_for(config).registry()
    package = registry.describe(2)
    assert package["DriftCheckBaselines"]["ModelDataQuality"]["Statistics"]["S3Uri"]
    lineage = package["CustomerMetadataProperties"]
    assert lineage["DataSnapshotUrl"] == retraining["DataSnapshotUrl"]
    assert lineage["ParentDataSnapshotUrl"] == retraining["ParentDataSnapshotUrl"]
    store = backend_for(config).object_store()
    grown = load_snapshot(store, lineage["DataSnapshotUrl"])
    assert grown.parent == lineage["ParentDataSnapshotUrl"] != grown.url
    assert grown.counts() == {"bicycle": 100, "motorcycle": 100}  # 40 + 60 each
    assert store.read_bytes(package["ModelDataUrl"]) != store.read_bytes(
        registry.describe(1)["ModelDataUrl"])
    shown = scones(config, "registry", "show", "2")
    assert f"DataSnapshotUrl:" in shown.stdout and grown.url in shown.stdout
    listed = json.loads(scones(config, "data", "list", "--json").stdout)
    assert {s["DataSnapshotUrl"]: s["ModelPackageVersions"] for s in listed}[grown.url] == [2]

    # metrics, one line per value as PutMetricData takes them
    metrics = [json.loads(line) for line in state.metrics_file.read_text().splitlines()]
    violation_counts = [m["Value"] for m in metrics if m["MetricName"] == "Violations"]
    assert violation_counts[0] == 0 and violation_counts[-1] == len(violations)
    assert any(m["MetricName"] == "feature_baseline_drift_brightness" and m["Value"] > 0.5
               for m in metrics)

    # the same drift again within the cool-down does not start a second run
    with EndpointProcess(config) as endpoint:
        send(endpoint, traffic(sample_data_dir, "dark")[:40], "dark-again")
        held = scones(config, "monitor", "run", "--retrain", "--json")
    again = json.loads(held.stdout)
    assert again["Alarm"] is True and again["Retraining"]["Started"] is False
    assert "cool-down" in again["Retraining"]["Reason"]
    assert len(backend_for(config).registry().list_packages()) == 2


def test_a_drift_with_nothing_new_to_learn_from_registers_nothing_and_says_why(
        deployed, sample_data_dir):
    from scones.local.endpoint.process import EndpointProcess
    from workflow.monitoring.check import MonitorState

    config = deployed
    with EndpointProcess(config) as endpoint:
        send(endpoint, traffic(sample_data_dir, "dark"), "unlabelled")
        drifted = scones(config, "monitor", "run", "--retrain", "--json")
    assert drifted.returncode == 0, drifted.stderr[-3000:]
    summary = json.loads(drifted.stdout)
    assert summary["Alarm"] is True
    retraining = summary["Retraining"]
    assert retraining["Started"] is False and retraining["DataSnapshotUrl"] is None
    assert "nothing new to learn from" in retraining["Reason"]
    assert "scones monitor label" in retraining["Reason"]
    from scones.backend import backend_for

    assert len(backend_for(config).registry().list_packages()) == 1
    # nothing started, so no cool-down holds back the run that labels make possible
    assert not MonitorState(config).retraining_file.exists()
    human = scones(config, "monitor", "run", "--retrain")
    assert human.returncode == 0 and "Traceback" not in human.stderr


def test_labels_merged_by_inference_id_give_the_accuracy_computed_by_hand(deployed,
                                                                          sample_data_dir,
                                                                          tmp_path):
    from scones.local.endpoint.process import EndpointProcess
    from workflow.monitoring.check import run_monitor, wilson_interval

    config = deployed.replace(monitoring=dataclasses.replace(deployed.monitoring, min_labels=10))
    with EndpointProcess(config) as endpoint:
        answers = send(endpoint, traffic(sample_data_dir, "clean")[::4], "q")
    run_monitor(config)
    labels = tmp_path / "labels" / "2026" / "ground-truth.jsonl"
    labels.parent.mkdir(parents=True)
    lines = [json.dumps({"groundTruthData": {"data": a["Label"], "encoding": "CSV"},
                         "eventMetadata": {"eventId": a["InferenceId"]}, "eventVersion": "0"})
             for a in answers[:25]]
    lines.insert(3, "[" * 100000)                      # hostile: never fatal
    lines.insert(5, json.dumps({"groundTruthData": {"data": "lorry"},
                                "eventMetadata": {"eventId": "q-1"}}))
    labels.write_text("\n".join(lines) + "\n")

    done = scones(config, "monitor", "label", str(labels.parent), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert (result["Labels"], result["Merged"], result["Malformed"]) == (25, 25, 2)
    correct = sum(CLASSES[int(np.argmax(a["Probabilities"]))] == a["Label"] for a in answers[:25])
    (quality,) = result["Quality"]
    assert quality["ModelVersion"] == 1 and quality["Records"] == 25
    assert quality["Correct"] == correct and quality["Accuracy"] == correct / 25
    assert quality["AccuracyInterval"] == [round(x, 4) for x in wilson_interval(correct, 25)]
    matrix = quality["ConfusionMatrix"]
    assert sum(sum(row.values()) for row in matrix.values()) == 25
    assert sum(matrix[c][c] for c in CLASSES) == correct

    # the next run reports quality per version against the registered accuracy
    report = run_monitor(config)
    (checked,) = report.summary["Quality"]
    assert checked["Accuracy"] == correct / 25
    registered = json.loads(Path(config.local.workspace / "s3" / EVALUATION_URL[5:]).read_text())
    accuracy = registered["binary_classification_metrics"]["accuracy"]["value"]
    assert checked["Threshold"] == round(accuracy - config.monitoring.accuracy_tolerance, 4)
    assert checked["Violation"] == (checked["AccuracyInterval"][1] < checked["Threshold"])


def test_malformed_capture_lines_are_counted_listed_and_never_in_the_figures(deployed,
                                                                              sample_data_dir):
    from scones.local.endpoint.process import EndpointProcess
    from workflow.monitoring.check import run_monitor

    config = deployed
    with EndpointProcess(config) as endpoint:
        send(endpoint, traffic(sample_data_dir, "clean")[:30], "ok")
    # the traffic's capture file (the deployment's own probes are captured in files of their own)
    (capture,) = [p for p in (config.local.workspace / "s3").rglob("*.jsonl")
                  if "datacapture" in p.parts
                  and json.loads(p.read_text().splitlines()[0])["eventMetadata"]["inferenceId"]
                  == "ok-0"]
    good = json.loads(capture.read_text().splitlines()[0])
    # which version answered, and the caller's InferenceId (the ground-truth merge key)
    metadata = good["eventMetadata"]
    assert (metadata["inferenceId"], metadata["modelVersion"]) == ("ok-0", 1)
    assert metadata["modelPackageArn"].endswith("/1") and "stage" in metadata

    def with_output(probabilities) -> str:
        record = json.loads(json.dumps(good))
        record["captureData"]["endpointOutput"]["data"] = json.dumps(probabilities)
        return json.dumps(record)

    broken_image = json.loads(json.dumps(good))
    broken_image["captureData"]["endpointInput"]["data"] = "bm90IGFuIGltYWdl"  # "not an image"
    with capture.open("a") as out:
        out.write("\n".join(["[" * 100000, with_output([1e308, 1e308]), with_output([-5, 7]),
                             "null", json.dumps(broken_image), "{\"captureData\": []}"]) + "\n")
    result = run_monitor(config)
    summary = result.summary
    assert summary["Records"] == 31 and summary["Malformed"] == 6  # the broken image's output counts
    reasons = [m["Reason"] for m in summary["MalformedLines"]]
    assert any("nested too deeply" in r for r in reasons)
    assert sum("class probabilities" in r for r in reasons) == 2
    assert any("endpointInput.data" in r for r in reasons)
    assert all(c["Records"] == 30 for c in summary["Drift"])  # only decodable images
    assert "Malformed lines" in (result.out_dir / "report.md").read_text()


def test_monitor_run_emits_cloudwatch_metrics_on_aws(tmp_path, aws_credentials):
    """On AWS the same summary goes to CloudWatch PutMetricData (moto)."""
    from moto import mock_aws

    from workflow.monitoring.check import MonitorState, emit_metrics

    summary = {"Violations": 2, "Records": 50, "Malformed": 1,
               "Drift": [{"FeatureName": "brightness", "ModelVersion": 3, "Distance": 0.9}],
               "Quality": []}
    with mock_aws():
        config = load_config("aws", overrides={
            "local.workspace": str(tmp_path / "ws"),
            "aws.role_arn": "arn:aws:iam::123456789012:role/sm", "aws.bucket": "b",
            "data.input_url": "s3://b/data"})
        from datetime import datetime, timezone

        emit_metrics(config, summary, datetime.now(timezone.utc))
        client = boto3.client("cloudwatch", region_name=config.aws.region)
        listed = client.list_metrics(Namespace=config.monitoring.metrics_namespace)["Metrics"]
    names = {m["MetricName"] for m in listed}
    assert {"Violations", "Records", "MalformedRecords",
            "feature_baseline_drift_brightness"} <= names
    drift = next(m for m in listed if m["MetricName"] == "feature_baseline_drift_brightness")
    assert {"Name": "ModelVersion", "Value": "3"} in drift["Dimensions"]
    assert not MonitorState(config).metrics_file.exists()


def test_accuracy_significantly_below_the_registered_one_is_a_quality_violation(
        deployed, sample_data_dir, tmp_path):
    from scones.local.endpoint.process import EndpointProcess
    from workflow.monitoring.check import QUALITY_CHECK, ingest_labels, run_monitor

    config = deployed.replace(monitoring=dataclasses.replace(deployed.monitoring, min_labels=20))
    with EndpointProcess(config) as endpoint:
        answers = send(endpoint, traffic(sample_data_dir, "clean")[::4], "w")
    first = run_monitor(config)
    assert not [v for v in first.violations if v["constraint_check_type"] == QUALITY_CHECK]
    # ground truth says every answer was wrong: accuracy 0 of 30, far below the registered one
    labels = tmp_path / "wrong.jsonl"
    labels.write_text("".join(json.dumps({
        "groundTruthData": {"data": CLASSES[1 - int(np.argmax(a["Probabilities"]))],
                            "encoding": "CSV"},
        "eventMetadata": {"eventId": a["InferenceId"]}, "eventVersion": "0"}) + "\n"
        for a in answers))
    assert ingest_labels(config, str(labels))["Merged"] == len(answers) == 30
    result = run_monitor(config)
    (quality,) = [v for v in result.violations if v["constraint_check_type"] == QUALITY_CHECK]
    assert quality["feature_name"] == "accuracy"
    assert "Accuracy 0.0000" in quality["description"] and "30 labelled" in quality["description"]
    assert result.alarm and (result.out_dir / "quality_over_time.png").is_file()
