"""The monitoring report on generated data-capture files in SageMaker's layout."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from scones.config import load_config
from workflow.monitoring import MonitoringError, build_report, parse_capture_lines, parse_since

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOW = datetime(2026, 11, 24, 23, 0, 0, tzinfo=timezone.utc)


def _record(probabilities, when: str, encoding="JSON") -> str:
    data = json.dumps(probabilities)
    if encoding == "BASE64":
        data = base64.b64encode(data.encode()).decode()
    return json.dumps({
        "captureData": {
            "endpointInput": {"observedContentType": "image/png", "mode": "INPUT",
                              "data": base64.b64encode(PNG_MAGIC).decode(), "encoding": "BASE64"},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                               "data": data, "encoding": encoding}},
        "eventMetadata": {"eventId": str(uuid.uuid4()), "inferenceTime": when},
        "eventVersion": "0"})


def _write_capture(root: Path, endpoint="scones-delivery-vehicles") -> Path:
    """Five good records over two hours, three malformed lines and a blank one."""
    base = root / endpoint / "AllTraffic" / "2026" / "11" / "24"
    hour21 = base / "21" / "03-04-123-aaaa.jsonl"
    hour22 = base / "22" / "10-00-000-bbbb.jsonl"
    hour21.parent.mkdir(parents=True)
    hour22.parent.mkdir(parents=True)
    hour21.write_text("\n".join([
        _record([0.45, 0.55], "2026-11-24T21:03:04Z"),          # motorcycle 0.55
        _record([0.95, 0.05], "2026-11-24T21:10:00Z"),          # bicycle 0.95
        "{not json",                                            # line 3: malformed
        _record([0.75, 0.25], "2026-11-24T21:59:59Z", "BASE64"),  # bicycle 0.75
    ]) + "\n")
    hour22.write_text("\n".join([
        _record([0.35, 0.65], "2026-11-24T22:00:00Z"),          # motorcycle 0.65
        "",
        json.dumps({"captureData": {}, "eventVersion": "0"}),   # line 3: no output
        _record([0.1, 0.2, 0.7], "2026-11-24T22:01:00Z"),       # line 4: three classes
        _record([0.85, 0.15], "2026-11-24T22:30:00Z"),          # bicycle 0.85
    ]) + "\n")
    return root


@pytest.fixture
def config(tmp_path):
    return load_config("local", overrides={"local.workspace": str(tmp_path / "ws")})


def test_summary_numbers_plots_and_malformed_lines(config, tmp_path):
    source = _write_capture(tmp_path / "capture")
    report = build_report(config, source=str(source), now=NOW)
    s = report.summary

    assert (s["records"], s["files"], s["malformed"]) == (5, 2, 3)
    assert s["class_distribution"] == {"bicycle": {"count": 3, "share": 0.6},
                                       "motorcycle": {"count": 2, "share": 0.4}}
    # confidences 0.55 0.65 0.75 0.85 0.95, linear interpolation between ranks
    assert s["confidence_quantiles"] == {"p5": 0.57, "p25": 0.65, "p50": 0.75, "p75": 0.85,
                                         "p95": 0.93}
    assert (s["under_threshold"], s["under_threshold_share"]) == (3, 0.6)  # threshold 0.8
    assert s["per_hour"] == [
        {"hour": "2026-11-24T21:00Z", "records": 3, "mean_confidence": 0.75,
         "under_threshold": 2},
        {"hour": "2026-11-24T22:00Z", "records": 2, "mean_confidence": 0.75,
         "under_threshold": 1}]
    where = [(Path(m["file"]).parent.name, m["line"]) for m in s["malformed_lines"]]
    assert where == [("21", 3), ("22", 3), ("22", 4)]
    reasons = [m["reason"] for m in s["malformed_lines"]]
    assert reasons[0].startswith("not JSON") and "endpointOutput" in reasons[1]
    assert "2 class probabilities" in reasons[2]

    assert report.out_dir == config.local.workspace / "reports" / "monitor-20261124T230000Z"
    for name, path in report.plots.items():
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        with Image.open(path) as image:
            image.verify()
    markdown = report.markdown_path.read_text()
    assert "(confidence_over_time.png)" in markdown and "(confidence_histogram.png)" in markdown
    assert "line 4: endpointOutput.data should be 2 class probabilities" in markdown
    assert json.loads((report.out_dir / "summary.json").read_text()) == s


def test_since_filters_records_and_skips_older_hour_folders(config, tmp_path):
    source = _write_capture(tmp_path / "capture")
    report = build_report(config, source=str(source), since="2026-11-24T22:00:00Z", now=NOW)
    # hour 21's file (with its malformed line) is skipped unread
    assert (report.summary["records"], report.summary["files"], report.summary["malformed"]) \
        == (2, 1, 2)
    relative = build_report(config, source=str(source), since="30m", now=NOW)
    assert relative.summary["records"] == 1  # only 22:30 is within 30 minutes of 23:00


def test_parse_since_forms():
    assert parse_since("2h", NOW) == NOW - timedelta(hours=2)
    assert parse_since("30m", NOW) == NOW - timedelta(minutes=30)
    assert parse_since("1d", NOW) == NOW - timedelta(days=1)
    assert parse_since("2026-11-24T21:00:00", NOW) == datetime(2026, 11, 24, 21,
                                                               tzinfo=timezone.utc)
    assert parse_since("2026-11-24T21:00:00+01:00", NOW) == datetime(2026, 11, 24, 20,
                                                                     tzinfo=timezone.utc)
    with pytest.raises(MonitoringError, match="--since 'yesterday'"):
        parse_since("yesterday", NOW)


def test_default_source_is_the_local_object_store_and_reports_never_overwrite(config):
    _write_capture(config.local.workspace / "s3" / "scones-local" / "datacapture")
    first = build_report(config, now=NOW)
    second = build_report(config, now=NOW)
    assert first.summary["source"] == \
        "s3://scones-local/datacapture/scones-delivery-vehicles/"
    assert first.summary["records"] == 5
    assert second.out_dir.name == "monitor-20261124T230000Z-2"
    assert first.markdown_path.exists() and second.markdown_path.exists()
    with pytest.raises(MonitoringError, match="already holds a report"):
        build_report(config, out_dir=first.out_dir, now=NOW)


def test_no_records_is_a_clear_error(config, tmp_path):
    with pytest.raises(MonitoringError, match="no data-capture records under "
                                              "s3://scones-local/datacapture/"):
        build_report(config, now=NOW)
    only_bad = tmp_path / "bad" / "x.jsonl"
    only_bad.parent.mkdir()
    only_bad.write_text("garbage\n")
    with pytest.raises(MonitoringError, match=r"1 malformed line\(s\), e.g. .*x.jsonl line 1"):
        build_report(config, source=str(only_bad.parent), now=NOW)
    assert not (config.local.workspace / "reports").exists() or \
        not list((config.local.workspace / "reports").iterdir())


def test_reads_s3_on_aws(aws_credentials, tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    config = load_config("aws", overrides={
        "aws.role_arn": "arn:aws:iam::123456789012:role/x", "aws.bucket": "scones-bucket",
        "data.input_url": "s3://scones-bucket/data", "local.workspace": str(tmp_path / "ws")})
    source = _write_capture(tmp_path / "capture")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="scones-bucket")
        for path in source.rglob("*.jsonl"):
            s3.put_object(Bucket="scones-bucket",
                          Key=f"datacapture/{path.relative_to(source).as_posix()}",
                          Body=path.read_bytes())
        report = build_report(config, out_dir=tmp_path / "r", now=NOW)
    assert (report.summary["records"], report.summary["malformed"]) == (5, 3)
    assert report.summary["malformed_lines"][0]["file"].startswith("s3://scones-bucket/")


def test_cli_report(config, tmp_path):
    source = _write_capture(tmp_path / "capture")
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    base = [sys.executable, "-m", "app.cli.main", "monitor", "report",
            "--set", f"local.workspace={config.local.workspace}"]
    done = subprocess.run(base + ["--source", str(source), "--json"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["Records"] == 5 and Path(summary["Report"]).is_file()
    # PascalCase keys (the --json convention); class names stay as they are
    assert set(summary["ClassDistribution"]) == {"bicycle", "motorcycle"}
    assert summary["MalformedLines"][0]["Line"] >= 1 and "P95" in summary["ConfidenceQuantiles"]
    assert "3 malformed capture line(s)" in done.stderr

    done = subprocess.run(base + ["--source", str(source), "--since", "soon"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: --since 'soon'")


def test_report_on_traffic_captured_by_the_deployed_local_endpoint(tmp_path, small_model_tar,
                                                                    sample_data_dir):
    """Approve -> deploy (state file) -> the local endpoint serves it and captures -> report."""
    import urllib.request

    from helpers import register_model
    from workflow.stages import deploy_model_package
    from scones.local.endpoint.server import start_endpoint

    config = load_config("local", overrides={"local.workspace": str(tmp_path / "ws")})
    register_model(config, small_model_tar, url="s3://scones-local/models/1/model.tar.gz",
                   ModelApprovalStatus="Approved",
                   InferenceSpecification={"Containers": [{
                       "Image": "pytorch-inference",
                       "ModelDataUrl": "s3://scones-local/models/1/model.tar.gz"}]})
    deploy_model_package(config, 1)
    images = sorted((sample_data_dir / "bicycle").glob("*.png"))[:4] + \
        sorted((sample_data_dir / "motorcycle").glob("*.png"))[:4]
    answers = []
    with start_endpoint(config) as endpoint:
        assert endpoint.model_version == 1
        for image in images:
            request = urllib.request.Request(f"{endpoint.url}/invocations",
                                             data=image.read_bytes(),
                                             headers={"Content-Type": "image/png"})
            with urllib.request.urlopen(request, timeout=30) as response:
                answers.append(json.loads(response.read()))

    report = build_report(config)
    s = report.summary
    assert (s["records"], s["malformed"]) == (8, 0)
    predicted = [max(range(2), key=lambda i: a[i]) for a in answers]
    assert s["class_distribution"]["bicycle"]["count"] == predicted.count(0)
    assert s["class_distribution"]["motorcycle"]["count"] == predicted.count(1)
    under = sum(max(a) < config.workflow.confidence_threshold for a in answers)
    assert s["under_threshold"] == under


def test_the_monitor_profiles_the_image_exactly_as_the_endpoint_decodes_it(sample_data_dir):
    """Like with like: the baseline profiles preprocess.py's decoding (the serving decoder's),
    so the monitor must decode each captured request the same way: an RGBA PNG, a JPEG and
    larger photos of one picture give the model's pixels, and the same features."""
    import importlib.util
    import io

    import numpy as np

    from workflow.monitoring import profile

    spec = importlib.util.spec_from_file_location(
        "serving_for_profile_test", REPO / "pipelines" / "jobs" / "inference.py")
    serving = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving)

    def encoded(image: Image.Image, fmt: str, size=None) -> bytes:
        image = image.resize(size, Image.Resampling.LANCZOS) if size else image
        buffer = io.BytesIO()
        image.save(buffer, fmt, quality=90)
        return buffer.getvalue()

    for path in sorted((sample_data_dir / "bicycle").glob("*.png"))[:5]:
        rgba = Image.open(path)
        assert rgba.mode == "RGBA"  # the training files' own mode
        rgb = rgba.convert("RGB")
        forms = [path.read_bytes(), encoded(rgb, "JPEG"), encoded(rgb, "JPEG", (640, 480)),
                 encoded(rgb, "PNG", (320, 240)), encoded(rgb, "JPEG", (4032, 3024)),
                 encoded(rgb.quantize(64), "PNG"), encoded(rgb.convert("L"), "PNG")]
        for data in forms:
            decoded, _, _, _ = profile.decode_for_model(data)
            assert np.array_equal(decoded, serving.decode_image(data)), path.name


def test_capture_records_dated_in_the_future_are_reported_not_counted(config, tmp_path):
    source = _write_capture(tmp_path / "capture")
    later = source / "scones-delivery-vehicles" / "AllTraffic" / "2026" / "11" / "24" / "22"
    (later / "59-00-000-cccc.jsonl").write_text("\n".join([
        _record([0.9, 0.1], "2026-11-24T22:59:00Z"),   # a minute before now: counted
        _record([0.2, 0.8], "2026-11-25T09:00:00Z"),   # ten hours ahead: refused
        _record([0.3, 0.7], "2027-11-24T23:00:00Z"),   # a year ahead: refused
    ]) + "\n")
    s = build_report(config, source=str(source), now=NOW).summary
    assert (s["records"], s["malformed"]) == (6, 5)
    future = [m for m in s["malformed_lines"] if "in the future" in m["reason"]]
    assert [m["line"] for m in future] == [2, 3]
    assert s["last_inference"] == "2026-11-24T22:59:00+00:00"


def test_monitor_run_refuses_capture_records_dated_in_the_future(config, tmp_path):
    from workflow.monitoring.check import run_monitor

    source = tmp_path / "capture" / "scones-delivery-vehicles" / "AllTraffic"
    source.mkdir(parents=True)
    (source / "x.jsonl").write_text("\n".join([
        _record([0.9, 0.1], "2026-11-24T22:00:00Z"),
        _record([0.2, 0.8], "2026-11-26T22:00:00Z")]) + "\n")
    summary = run_monitor(config, source=str(tmp_path / "capture"), now=NOW).summary
    assert (summary["Records"], summary["Malformed"]) == (1, 1)
    assert "in the future" in summary["MalformedLines"][0]["Reason"]
    assert summary["LastInference"] == "2026-11-24T22:00:00+00:00"


@pytest.mark.parametrize("content", ["Image,Label\nx.png,bicycle\n", "\x89PNG\r\n\x1a\n\0\0",
                                     ""])
def test_monitor_label_on_a_file_that_is_not_json_lines_is_a_named_error(config, tmp_path,
                                                                        content):
    labels = tmp_path / "labels.csv"
    labels.write_text(content, errors="surrogateescape")
    done = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "monitor", "label", str(labels),
         "--set", f"local.workspace={config.local.workspace}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})
    assert done.returncode != 0, done.stdout
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert "labels.csv" in done.stderr and "groundTruthData" in done.stderr
    assert not (config.local.workspace / "monitoring").exists() or not list(
        (config.local.workspace / "monitoring").rglob("labels.jsonl"))


def _labelled_capture(folder: Path, first: int, count: int) -> list[str]:
    """count capture records with inferenceIds q-<n>, in an hour folder of their own."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, ids = [], []
    for n in range(first, first + count):
        record = json.loads(_record([0.9, 0.1] if n % 3 else [0.2, 0.8],
                                    f"2026-11-24T21:{n % 60:02d}:00Z"))
        record["eventMetadata"]["inferenceId"] = f"q-{n}"
        ids.append(f"q-{n}")
        lines.append(json.dumps(record))
    (folder / f"{first:05d}.jsonl").write_text("\n".join(lines) + "\n")
    return ids


def test_each_monitor_run_reads_only_new_capture_never_the_whole_history(config, tmp_path):
    """The checked predictions are kept indexed by their merge keys: a later run (and a
    label) costs what it adds, not what came before. Ground truth still merges."""
    from workflow.monitoring.check import MonitorState, ingest_labels, run_monitor

    source = tmp_path / "capture" / "scones-delivery-vehicles" / "AllTraffic"
    first = _labelled_capture(source, 0, 300)
    run_monitor(config, source=str(tmp_path / "capture"), now=NOW)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"groundTruthData": {"data": "bicycle"},
                                          "eventMetadata": {"eventId": i}}) + "\n"
                              for i in first[:30]))
    assert ingest_labels(config, str(labels))["Merged"] == 30
    second = _labelled_capture(source, 300, 50)

    opened: list[str] = []
    listening = [True]

    def audit(event, args):  # audit hooks stay for the process: this one goes quiet
        if listening[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(audit)
    try:
        result = run_monitor(config, source=str(tmp_path / "capture"), now=NOW)
    finally:
        listening[0] = False
    assert result.summary["Records"] == len(second)
    state_folder = MonitorState(config).folder
    history = [p for p in opened if Path(p).parent == state_folder and p.endswith(".jsonl")
               and "metrics" not in p]
    assert not history, history
    (quality,) = result.summary["Quality"]
    # q-<n> with n % 3 == 0 was predicted motorcycle; labelled bicycle
    assert quality["Records"] == 30
    assert quality["Correct"] == sum(1 for n in range(30) if n % 3)


def test_an_earlier_workspaces_json_lines_are_imported_once(config):
    from workflow.monitoring.check import MonitorState, merged_predictions

    state = MonitorState(config)
    state.folder.mkdir(parents=True)
    state.predictions_file.write_text("".join(json.dumps(
        {"EventId": f"e{n}", "InferenceId": f"i{n}", "Time": "2026-11-24T21:00:00+00:00",
         "ModelVersion": 1, "Stage": "prod", "Confidence": 0.9, "Predicted": "bicycle"}) + "\n"
        for n in range(5)))
    state.labels_file.write_text(json.dumps({"Id": "i1", "Label": "motorcycle"}) + "\n"
                                 + json.dumps({"Id": "e3", "Label": "bicycle"}) + "\n"
                                 + json.dumps({"Id": "i1", "Label": "bicycle"}) + "\n")
    merged = merged_predictions(state)
    assert [(m["EventId"], m["Label"]) for m in merged] == [("e1", "bicycle"), ("e3", "bicycle")]
    assert not state.predictions_file.exists() and merged_predictions(state) == merged


def _batch_record(images: list[bytes], predictions: list, when="2026-11-24T21:00:00Z") -> str:
    """A bulk run's batch invocation as SageMaker captures it: ONE record, the request's
    JSON body in base64, the answer as JSON."""
    body = json.dumps({"images": [base64.b64encode(i).decode() for i in images]}).encode()
    return json.dumps({
        "captureData": {
            "endpointInput": {"observedContentType": "application/x-scones-image-batch+json",
                              "mode": "INPUT", "data": base64.b64encode(body).decode(),
                              "encoding": "BASE64"},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                               "data": json.dumps({"predictions": predictions}),
                               "encoding": "JSON"}},
        "eventMetadata": {"eventId": "ev-1", "inferenceId": "batch-7", "inferenceTime": when},
        "eventVersion": "0"})


def test_a_captured_batch_request_is_read_as_one_record_per_answered_image(sample_data_dir):
    photos = [p.read_bytes() for p in sorted((sample_data_dir / "bicycle").glob("*.png"))[:3]]
    verbose = {"probabilities": [0.9, 0.1], "ood_score": 3.2, "ood_threshold": 40.0}
    refused = {"error": "not PNG or JPEG", "status": 400}
    # answers: verbose, plain, and two refusals (a refused image is not traffic)
    line = _batch_record(photos + [b"not an image"], [verbose, [0.2, 0.8], refused, refused])
    records, malformed = parse_capture_lines("f.jsonl", (line + "\n").encode(), 2, now=NOW)

    assert malformed == []
    assert [r.probabilities for r in records] == [(0.9, 0.1), (0.2, 0.8)]
    assert [r.event_id for r in records] == ["ev-1#0", "ev-1#1"]
    assert [r.inference_id for r in records] == ["batch-7#0", "batch-7#1"]
    # each record carries its own image, so drift checks profile it as a single request
    assert [base64.b64decode(r.input_base64) for r in records] == photos[:2]
    assert all(r.line == 1 for r in records)


def test_a_batch_answer_that_does_not_match_its_request_is_malformed(sample_data_dir):
    photo = next((sample_data_dir / "bicycle").glob("*.png")).read_bytes()
    lines = [_batch_record([photo, photo], [[0.5, 0.5]]),          # 2 images, 1 answer
             _batch_record([photo], [[0.5, 0.5]]).replace(         # a batch answer to an image
                 "application/x-scones-image-batch+json", "image/png")]
    records, malformed = parse_capture_lines(
        "f.jsonl", ("\n".join(lines) + "\n").encode(), 2, now=NOW)

    assert records == []
    assert [m.line for m in malformed] == [1, 2]
    assert "one to one" in malformed[0].reason and "image/png" in malformed[1].reason
