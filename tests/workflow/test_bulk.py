"""The bulk workflow (workflow/bulk.py) end to end in the local engine: the SDK-built
Distributed Map ASL in moto's interpreter, the batch Lambdas from their zips, the real
local endpoint answering batch requests, real images plus bad files."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from scones.config import load_config
from scones.storage import LocalObjectStore
from workflow.bulk import (BATCH_STATE, MAP_STATE, THRESHOLD_EXCEEDED_ERROR,
                           bulk_definition_json)
from lambdas.classify_image_batch import BATCH_CONTENT_TYPE
from scones.local.endpoint.process import EndpointProcess
from workflow.bulk import BulkWorkflow
from workflow.monitoring import parse_capture_lines

from helpers import deploy_locally

# Each test takes tens of seconds: bulk workflow runs over hundreds of images.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
ASL_VALIDATOR = REPO_ROOT / ".tools" / "node_modules" / ".bin" / "asl-validator"
BAD_FILES = {"zz-notes.txt": "InvalidImage", "zz-empty.png": "InvalidImage",
             "zz-truncated.png": "InvalidImage", "zz-truncated.jpg": "EndpointError"}


def stage_images(config, sample_data_dir: Path, per_class: int, prefix: str) -> dict[str, str]:
    """Real images (and the bad files) into the workspace's object store under prefix;
    {s3 url: expected error or None}."""
    store = LocalObjectStore(config.local.workspace / "s3")
    expected = {}
    good = [p for name in ("bicycle", "motorcycle")
            for p in sorted((sample_data_dir / name).glob("*.png"))[:per_class]]
    for path in good:
        url = f"{prefix}{path.parent.name}/{path.name}"
        store.write_bytes(url, path.read_bytes())
        expected[url] = None
    jpeg = io.BytesIO()
    Image.open(good[0]).convert("RGB").save(jpeg, format="JPEG")
    contents = {"zz-notes.txt": b"a text file, not an image\n", "zz-empty.png": b"",
                "zz-truncated.png": good[0].read_bytes()[:60],
                "zz-truncated.jpg": jpeg.getvalue()[:200]}
    for name, data in contents.items():
        store.write_bytes(f"{prefix}{name}", data)
        expected[f"{prefix}{name}"] = BAD_FILES[name]
    return expected


@pytest.fixture(scope="module")
def bulk_config(tmp_path_factory, small_model_tar):
    config = load_config("local", {
        "local.workspace": str(tmp_path_factory.mktemp("bulk") / "ws"),
        "workflow.confidence_threshold": 0.54})
    deploy_locally(config, small_model_tar)
    return config


def test_every_image_of_a_prefix_is_reported_once_with_bad_files_by_name(
        bulk_config, sample_data_dir):
    config = bulk_config
    expected = stage_images(config, sample_data_dir, 150, "s3://incoming/bulk/")
    with BulkWorkflow(config) as workflow:
        run = workflow.run_bulk("s3://incoming/bulk/", batch_size=64, progress=False)

    assert run.status == "SUCCEEDED", (run.error, run.cause, run.summary)
    images = [r.image for r in run.results]
    assert sorted(images) == sorted(expected) and len(images) == len(set(images)) == 304
    by_image = {r.image: r for r in run.results}
    not_a_vehicle = 0
    for url, error in expected.items():
        result = by_image[url]
        if error is not None:
            assert (result.status, result.error) == ("FAILED", error), result
            assert result.cause
            continue
        assert len(result.inferences) == 2 and abs(sum(result.inferences) - 1) < 1e-4
        if result.error == "NotAVehicle":  # over the version's OOD threshold: a verdict
            assert (result.status, result.meets_threshold) == ("FAILED", False), result
            not_a_vehicle += 1
            continue
        label = config.classes[result.inferences.index(max(result.inferences))]
        assert result.predicted_label == label
        if max(result.inferences) >= 0.54:
            assert (result.status, result.meets_threshold) == ("SUCCEEDED", True), result
        else:
            assert (result.error, result.meets_threshold) == ("ThresholdConfidenceNotMet",
                                                              False), result
    # real vehicle photos: the OOD threshold is set for 2 % false rejection on validation
    assert not_a_vehicle <= 0.1 * 300, not_a_vehicle
    summary = run.summary
    assert summary["Images"] == 304 and summary["Batches"] == 5
    assert summary["Succeeded"] + summary["BelowThreshold"] + summary["Failed"] == 304
    assert summary["Failed"] == 4 and summary["Errors"] == {"EndpointError": 1,
                                                            "InvalidImage": 3}
    assert summary["FailedBatches"] == 0 and summary["ThresholdExceeded"] is False
    # As SageMaker does, the endpoint captured each batch request as one record (one per
    # batch: 5); monitoring reads them as one record per image the model answered.
    captured = list((config.local.workspace / "s3" / config.aws.bucket / "datacapture")
                    .rglob("*.jsonl"))
    lines = [line for p in captured for line in p.read_text().splitlines()]
    assert all(json.loads(line)["captureData"]["endpointInput"]["observedContentType"]
               == BATCH_CONTENT_TYPE for line in lines)
    records = [r for p in captured
               for r in parse_capture_lines(str(p), p.read_bytes(), 2)[0]]
    assert len(lines) == 5 and len(records) == 300
    assert len({r.event_id for r in records}) == 300
    assert all(r.input_base64 and r.model_version is not None for r in records)


class FailingFirstRequests:
    """A proxy on 127.0.0.1 in front of the real endpoint: answers the first `failures`
    invocations with HTTP 400 (as SageMaker does for a model error), forwards the rest."""

    def __init__(self, target_url: str, failures: int):
        self.failures = failures
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes, headers: dict) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    fail = proxy.failures > 0
                    proxy.failures -= fail
                if fail:
                    self._answer(400, b'{"message": "injected fault"}',
                                 {"Content-Type": "application/json",
                                  "x-amzn-ErrorType": "ValidationError"})
                    return
                request = urllib.request.Request(target_url + self.path, data=body,
                                                 headers=dict(self.headers), method="POST")
                with urllib.request.urlopen(request, timeout=60) as response:
                    self._answer(response.status, response.read(),
                                 {"Content-Type": response.headers["Content-Type"]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("tolerated, succeeds", [(25.0, True), (5.0, False)])
def test_failed_batches_are_tolerated_up_to_the_threshold(bulk_config, sample_data_dir,
                                                          tolerated, succeeds):
    config = bulk_config
    prefix = f"s3://incoming/tolerated-{int(tolerated)}/"
    expected = stage_images(config, sample_data_dir, 18, prefix)   # 40 images, 5 batches of 8
    with EndpointProcess(config) as endpoint:
        proxy = FailingFirstRequests(endpoint.url, failures=1)
        try:
            with BulkWorkflow(config, endpoint_url=proxy.url) as workflow:
                run = workflow.run_bulk(prefix, batch_size=8, progress=False,
                                        tolerated_failure_percentage=tolerated)
        finally:
            proxy.close()

    assert sorted(r.image for r in run.results) == sorted(expected)
    failed_batch = [r for r in run.results if r.error == "EndpointError"
                    and "injected fault" in (r.cause or "")]
    assert len(failed_batch) == 8   # one whole batch, each image reported with its error
    assert run.summary["FailedBatches"] == 1 and run.summary["FailedBatchPercentage"] == 20.0
    if succeeds:
        assert run.status == "SUCCEEDED", (run.error, run.cause)
    else:
        assert (run.status, run.error) == ("FAILED", THRESHOLD_EXCEEDED_ERROR)
        assert "1 of 5 batches" in run.cause and "tolerated 5%" in run.cause


def test_bulk_definition_is_a_distributed_map_valid_for_asl_validator(tmp_path):
    config = load_config("local")
    asl = json.loads(bulk_definition_json(config))
    state = asl["States"][MAP_STATE]
    assert state["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED",
                                                         "ExecutionType": "STANDARD"}
    assert state["ItemReader"]["Resource"].endswith(":states:::s3:getObject")
    assert state["ItemReader"]["ReaderConfig"] == {"InputType": "JSON"}
    assert state["ResultWriter"]["Resource"].endswith(":states:::s3:putObject")
    assert state["ToleratedFailurePercentagePath"] == "$.tolerated_failure_percentage"
    assert state["ItemProcessor"]["States"][BATCH_STATE]["End"] is True
    if not ASL_VALIDATOR.exists():
        pytest.fail(f"{ASL_VALIDATOR} is missing: run `make tools` (npm install of the pinned "
                    "asl-validator)")
    path = tmp_path / "bulk.asl.json"
    path.write_text(bulk_definition_json(config))
    checked = subprocess.run([str(ASL_VALIDATOR), "--json-path", str(path)],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # and it refuses what is wrong: the validator is really looking
    broken = json.loads(path.read_text())
    broken["States"][MAP_STATE]["ItemProcessor"]["StartAt"] = "NoSuchState"
    path.write_text(json.dumps(broken))
    refused = subprocess.run([str(ASL_VALIDATOR), "--json-path", str(path)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert shutil.which("node")


def test_cli_prefix_runs_one_bulk_execution_and_prints_every_image(bulk_config,
                                                                  sample_data_dir):
    import os
    import sys

    config = bulk_config
    expected = stage_images(config, sample_data_dir, 10, "s3://incoming/cli/")
    command = [sys.executable, "-m", "app.cli.main", "workflow", "run", "--prefix",
               "s3://incoming/cli/", "--json", "--batch-size", "7",
               "--set", f"local.workspace={config.local.workspace}",
               "--set", "workflow.confidence_threshold=0.54",
               "--endpoint-idle-minutes", "0"]  # leave no endpoint running after the test
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                         env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})

    assert run.returncode == 1, run.stderr   # the bad files failed for other reasons
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert sorted(line["Image"] for line in lines) == sorted(expected)
    assert {line["Image"]: line["Error"] for line in lines
            if line["Error"] not in (None, "ThresholdConfidenceNotMet")} == {
        url: error for url, error in expected.items() if error}
    assert "4 batch(es), 0 failed" in run.stderr and "summary.json" in run.stderr
    # the run's results are mirrored into the workspace's object store
    assert list((config.local.workspace / "s3" / config.aws.bucket / "bulk-runs")
                .glob("*/summary.json"))
