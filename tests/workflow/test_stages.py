"""The staged deployment on the local backend, for real: approve -> staging -> test (the
inference workflow on the version's own held-back test split) -> promote -> prod, with the
guardrails (health check before the switch, bake and automatic rollback, serialised
deploys) and what reject/approve do to the endpoints."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from helpers import register_model, scones
from scones.backend import backend_for
from scones.config import load_config
from scones.local.deployment_state import EndpointStateFile, deployment_in_progress
from scones.workspace import Workspace
from workflow.stage_test import run_stage_test
from workflow.stages import (DeploymentRolledBack, HealthCheckFailed, PromotionRefused,
                             approve_and_deploy, deploy_model_package, endpoint_status,
                             promote, reject_and_report)

# Each test takes tens of seconds: deployments with health checks and bakes, staging tests.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PIPELINE = "scones-delivery-vehicles"

# fails every inference after the first: passes the health check, fails while baking
CANARY_FAILURE = '''

_scones_calls = [0]
_scones_predict_fn = predict_fn


def predict_fn(data, model):
    _scones_calls[0] += 1
    if _scones_calls[0] > 1:
        raise RuntimeError("canary fault: CUDA out of memory")
    return _scones_predict_fn(data, model)
'''


def _with_inference_suffix(model_tar: Path, suffix: str) -> bytes:
    """A copy of the archive whose code/inference.py has `suffix` appended."""
    out = io.BytesIO()
    with tarfile.open(model_tar) as source, tarfile.open(fileobj=out, mode="w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("code/inference.py"):
                data += suffix.encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _register(config, archive: bytes, test_split: Path, execution: str) -> dict:
    """Register as the pipeline does: the model, its evaluation (ModelMetrics) and, beside
    it in the execution's folders, Preprocess's test split."""
    store = backend_for(config).object_store()
    prefix = f"s3://{config.aws.bucket}/{PIPELINE}/{execution}"
    store.write_bytes(f"{prefix}/Preprocess/output/test/data.npz", test_split.read_bytes())
    evaluation = f"{prefix}/Evaluate/output/evaluation/evaluation.json"
    store.write_bytes(evaluation, json.dumps({"binary_classification_metrics": {
        "accuracy": {"value": 0.9}}}).encode())
    return register_model(
        config, archive, url=f"{prefix}/Train/output/model.tar.gz",
        ModelMetrics={"ModelQuality": {"Statistics": {
            "ContentType": "application/json", "S3Uri": evaluation}}})


@pytest.fixture
def staged(tmp_path, small_model_tar, small_training_run):
    config = load_config("local", overrides={
        "local.workspace": str(tmp_path / "ws"),
        "deployment.staging.test_min_accuracy": 0.45,
        "deployment.staging.test_images": 20,
        "deployment.prod.bake_seconds": 0})
    split = small_training_run["processed"] / "test" / "data.npz"
    good = small_model_tar.read_bytes()
    versions = [_register(config, good, split, f"exec-{n}") for n in (1, 2, 3)]
    return config, backend_for(config).registry(), versions, split


def _scones(*args, workspace, extra=()):
    return scones(*args, *extra, workspace=workspace, timeout=300)


def test_approve_test_promote_through_the_cli(staged):
    config, registry, _, _ = staged
    workspace = config.local.workspace
    settings = ("--set", "deployment.staging.test_min_accuracy=0.45",
                "--set", "deployment.staging.test_images=20",
                "--set", "deployment.prod.bake_seconds=0.5",
                "--set", "deployment.prod.bake_probe_interval_seconds=0.1")

    approved = _scones("registry", "approve", "1", workspace=workspace, extra=settings)
    assert approved.returncode == 0, approved.stderr
    assert "staging endpoint scones-delivery-vehicles-staging: created with version 1" \
        in approved.stdout
    statuses = json.loads(_scones("endpoint", "status", "--json", workspace=workspace).stdout)
    assert [(s["Stage"], s["ModelPackageVersion"]) for s in statuses] == [
        ("staging", 1), ("prod", None)]  # staging, not prod

    refused = _scones("endpoint", "promote", workspace=workspace, extra=settings)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: version 1 on staging has not been tested")

    tested = _scones("endpoint", "test", "--stage", "staging", "--json", workspace=workspace,
                     extra=settings)
    assert tested.returncode == 0, tested.stdout + tested.stderr[-2000:]
    result = json.loads(tested.stdout)
    assert result["Passed"] and result["Images"] == 20 and result["ModelPackageVersion"] == 1
    assert result["Accuracy"] >= 0.45 and result["FailureRate"] == 0

    promoted = _scones("endpoint", "promote", workspace=workspace, extra=settings)
    assert promoted.returncode == 0, promoted.stderr
    assert "created prod endpoint scones-delivery-vehicles: serving version 1" in promoted.stdout
    assert "baked 0.5 s" in promoted.stdout
    shown = _scones("endpoint", "status", workspace=workspace)
    assert "staging: endpoint scones-delivery-vehicles-staging: InService, serving version 1" \
        in shown.stdout
    assert "prod: endpoint scones-delivery-vehicles: InService, serving version 1" in shown.stdout
    assert "staging test: passed" in shown.stdout
    # the workflow's capture of the test went to staging's endpoint, not prod's
    capture = Path(workspace) / "s3" / "scones-local" / "datacapture"
    assert (capture / "scones-delivery-vehicles-staging").is_dir()
    # prod's capture holds only the deployment's own probes (health check, bake), which
    # went through its real request path and say so in their inferenceId
    prod_ids = [json.loads(line)["eventMetadata"].get("inferenceId")
                for path in (capture / "scones-delivery-vehicles").rglob("*.jsonl")
                for line in path.read_text().splitlines()]
    assert prod_ids and all(i.startswith("scones-deployment-probe-") for i in prod_ids)


def test_a_failed_staging_test_blocks_promotion(staged):
    config, registry, _, _ = staged
    strict = config.replace(deployment=type(config.deployment)(
        staging=type(config.deployment.staging)(test_min_accuracy=1.0, test_images=20,
                                                 test_max_failure_rate=0.0),
        prod=config.deployment.prod))
    approve_and_deploy(strict, 1)
    result = run_stage_test(strict, "staging")
    assert result["Accuracy"] < 1.0 and not result["Passed"]
    with pytest.raises(PromotionRefused, match="failed its staging test"):
        promote(strict)
    assert endpoint_status(strict, stage="prod")["EndpointStatus"] == "NotDeployed"


def test_a_broken_archive_leaves_the_old_version_serving(staged):
    config, registry, versions, split = staged
    broken = _register(config, b"not a tarball at all", split, "exec-broken")
    registry.approve(1)
    deploy_model_package(config, 1, stage="prod")
    before = EndpointStateFile.of(config).path.read_bytes()
    registry.approve(broken["ModelPackageVersion"])
    done = _scones("endpoint", "deploy", "--stage", "prod", "--version",
                   str(broken["ModelPackageVersion"]), workspace=config.local.workspace)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "failed its health check, nothing was switched: the model does not load" \
        in done.stderr
    assert EndpointStateFile.of(config).path.read_bytes() == before
    # an archive that loads but cannot answer an image is caught the same way
    mute = _register(config, _with_inference_suffix(
        Path(registry.describe(1)["LocalModelData"]),
        "\n\ndef predict_fn(data, model):\n    raise RuntimeError('no weights')\n"),
        split, "exec-mute")
    registry.approve(mute["ModelPackageVersion"])
    with pytest.raises(HealthCheckFailed, match="does not answer an image .*no weights"):
        deploy_model_package(config, mute["ModelPackageVersion"], stage="prod")
    assert endpoint_status(config, stage="prod")["ModelPackageVersion"] == 1


def test_a_failing_canary_is_rolled_back_after_the_switch(staged):
    config, registry, _, split = staged
    baking = config.replace(deployment=type(config.deployment)(
        staging=config.deployment.staging,
        prod=type(config.deployment.prod)(bake_seconds=2, bake_probe_interval_seconds=0.1,
                                          max_error_rate=0.05)))
    canary = _register(config, _with_inference_suffix(
        Path(registry.describe(1)["LocalModelData"]), CANARY_FAILURE), split, "exec-canary")
    registry.approve(1)
    registry.approve(canary["ModelPackageVersion"])
    deploy_model_package(baking, 1, stage="prod")
    with pytest.raises(DeploymentRolledBack, match=r"rolled back .* error rate \d+/\d+ crossed "
                                                   r"the alarm's limit 5%.*CUDA out of memory"):
        deploy_model_package(baking, canary["ModelPackageVersion"], stage="prod")
    status = endpoint_status(baking, stage="prod")
    assert status["ModelPackageVersion"] == 1
    assert status["LastRollback"]["FromVersion"] == canary["ModelPackageVersion"]
    assert [h["ModelPackageVersion"] for h in status["History"]] == [
        1, canary["ModelPackageVersion"]]


def test_duplicate_deploys_are_no_ops_and_deploys_are_serialised(staged):
    config, registry, _, _ = staged
    slow = config.replace(deployment=type(config.deployment)(
        staging=config.deployment.staging,
        prod=type(config.deployment.prod)(bake_seconds=3, bake_probe_interval_seconds=0.2)))
    for version in (1, 2):
        registry.approve(version)
    assert deploy_model_package(config, 1, stage="prod")["Action"] == "created"
    again = deploy_model_package(config, 1, stage="prod")
    assert again["Action"] == "none" and "already serves version 1" in again["Reason"]
    assert EndpointStateFile.of(config).read()["History"] == []

    finished = {}

    def deploy(version, settings):
        deploy_model_package(settings, version, stage="prod")
        finished[version] = time.monotonic()

    first = threading.Thread(target=deploy, args=(2, slow))
    first.start()
    time.sleep(1.0)  # v2 switched and is baking: the endpoint is mid-update
    second = threading.Thread(target=deploy, args=(1, config))
    second.start()
    first.join(60)
    second.join(60)
    # the later request waited for the bake and was delivered after it, not lost
    assert finished[1] > finished[2]
    state = EndpointStateFile.of(config).read()
    assert state["ModelPackageVersion"] == 1
    assert [h["ModelPackageVersion"] for h in state["History"]] == [1, 2]


def test_reject_and_approve_say_what_they_do_to_the_endpoints(staged):
    config, registry, _, _ = staged
    approve_and_deploy(config, 1)
    approve_and_deploy(config, 2)
    assert endpoint_status(config, stage="staging")["ModelPackageVersion"] == 2

    _, _, messages = reject_and_report(config, 2, "misreads night photos")
    assert messages and messages[0].startswith("warning: staging endpoint "
                                               "scones-delivery-vehicles-staging still serves "
                                               "version 2")
    assert endpoint_status(config, stage="staging")["ModelPackageVersion"] == 2
    registry.approve(2)
    _, _, messages = reject_and_report(config, 2, "misreads night photos", undeploy=True)
    assert messages == ["staging endpoint scones-delivery-vehicles-staging: rolled back to "
                        "version 1"]
    assert endpoint_status(config, stage="staging")["ModelPackageVersion"] == 1

    # an approval older than what staging serves is not deployed unless asked
    approve_and_deploy(config, 3)
    registry.reject(1, "superseded")
    _, _, deployment = approve_and_deploy(config, 1, "bring it back")
    assert deployment["Action"] == "skipped" and "staging serves version 3" in deployment["Reason"]
    assert endpoint_status(config, stage="staging")["ModelPackageVersion"] == 3
    package = registry.describe(1)
    assert package["ApprovalDescription"] == "bring it back (previously rejected: superseded)"
    registry.reject(1, "still superseded")
    _, _, deployment = approve_and_deploy(config, 1, "really", deploy_older=True)
    assert deployment["ModelPackageVersion"] == 1
    assert endpoint_status(config, stage="staging")["ModelPackageVersion"] == 1


def test_two_approvals_at_once_leave_staging_on_the_newer_version(staged):
    """`registry approve 2 & registry approve 1`: the older approval's "is staging newer?"
    check must see the newer deployment, not race it (both are real processes)."""
    config, registry, _, _ = staged
    workspace = config.local.workspace
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}

    def approve(version: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", "registry", "approve", str(version),
             "--set", f"local.workspace={workspace}",
             "--set", "deployment.staging.bake_seconds=4",
             "--set", "deployment.staging.bake_probe_interval_seconds=0.5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)

    newer = approve(2)
    deadline = time.monotonic() + 120
    while not deployment_in_progress(Workspace(workspace), config.stage_endpoint_name("staging")):
        # version 2 is being deployed (health check, bake)
        assert newer.poll() is None and time.monotonic() < deadline, newer.communicate()
        time.sleep(0.05)
    older = approve(1)
    out_newer, err_newer = newer.communicate(timeout=300)
    out_older, err_older = older.communicate(timeout=300)
    assert newer.returncode == 0, err_newer
    assert older.returncode == 0, err_older
    assert endpoint_status(config, stage="staging")["ModelPackageVersion"] == 2
    assert "staging serves version 2, newer than 1" in out_older + err_older
    assert registry.describe(1)["ModelApprovalStatus"] == "Approved"


def _post_image(url: str, image: bytes) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/invocations", data=image, method="POST",
                                     headers={"Content-Type": "image/png"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_deployment_never_reports_healthy_an_endpoint_whose_requests_fail(staged,
                                                                            sample_data_dir):
    """Data capture broken (its folder cannot be made): the health check and the bake go
    through the endpoint's real request path, so either the deployment refuses or rolls
    back, or a real /invocations answers - never "baked" while every request fails."""
    from scones.local.endpoint.process import EndpointProcess
    from workflow.stages import DeploymentError

    config, registry, _, _ = staged
    baking = config.replace(deployment=type(config.deployment)(
        staging=config.deployment.staging,
        prod=type(config.deployment.prod)(bake_seconds=1.5, bake_probe_interval_seconds=0.2)))
    for version in (1, 2):
        registry.approve(version)
    deploy_model_package(baking, 1, stage="prod")
    capture = Path(config.local.workspace) / "s3" / config.aws.bucket / "datacapture"
    capture.mkdir(parents=True, exist_ok=True)
    for leftover in capture.iterdir():  # the probes' records: replaced by a blocking file
        import shutil

        shutil.rmtree(leftover)
    (capture / config.workflow.endpoint_name).write_text("a file where a folder must be")

    try:
        result = deploy_model_package(baking, 2, stage="prod")
    except DeploymentError as exc:
        # refused or rolled back: then it says why, and version 1 serves
        assert "capture" in str(exc).lower() or "500" in str(exc), exc
        assert endpoint_status(config, stage="prod")["ModelPackageVersion"] == 1
        return
    assert result["ModelPackageVersion"] == 2 and result["BakedSeconds"] == 1.5
    image = sorted((sample_data_dir / "bicycle").glob("*.png"))[0].read_bytes()
    with EndpointProcess(config) as endpoint:
        assert _post_image(endpoint.url, image) == 200
    # the records capture could not write are counted, and status says so
    status = json.loads(_scones("endpoint", "status", "--stage", "prod", "--json",
                                workspace=config.local.workspace).stdout)
    assert status["DroppedCaptureRecords"] >= 1
    shown = _scones("endpoint", "status", "--stage", "prod", workspace=config.local.workspace)
    assert "record(s) dropped, predictions still answered" in shown.stdout


def test_a_bake_killed_midway_is_shown_and_the_next_promote_resumes_it(staged):
    config, registry, _, _ = staged
    workspace = config.local.workspace
    registry.approve(1)
    deploy_model_package(config, 1, stage="prod")
    approve_and_deploy(config, 2)
    assert run_stage_test(config)["Passed"]
    long_bake = ("--set", "deployment.prod.bake_seconds=120",
                 "--set", "deployment.prod.bake_probe_interval_seconds=0.5")
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    promoting = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "endpoint", "promote",
         "--set", f"local.workspace={workspace}", *long_bake],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    deadline = time.monotonic() + 180
    while endpoint_status(config, stage="prod")["ModelPackageVersion"] != 2:
        assert promoting.poll() is None and time.monotonic() < deadline, \
            promoting.communicate()
        time.sleep(0.2)
    time.sleep(1.0)  # switched: baking now
    promoting.kill()  # SIGKILL: no handler runs
    promoting.wait()

    shown = _scones("endpoint", "status", "--stage", "prod", "--json", workspace=workspace)
    status = json.loads(shown.stdout)
    assert status["ModelPackageVersion"] == 2
    unfinished = status["UnfinishedBake"]
    assert unfinished["ModelPackageVersion"] == 2 and unfinished["PreviousVersion"] == 1
    text = _scones("endpoint", "status", "--stage", "prod", workspace=workspace).stdout
    assert "bake of version 2 did not finish" in text and "endpoint promote" in text

    resumed = _scones("endpoint", "promote", workspace=workspace,
                      extra=("--set", "deployment.prod.bake_seconds=1",
                             "--set", "deployment.prod.bake_probe_interval_seconds=0.2"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed the unfinished bake of version 2" in resumed.stdout
    assert "nothing changed" not in resumed.stdout and "already serves" not in resumed.stdout
    after = json.loads(_scones("endpoint", "status", "--stage", "prod", "--json",
                               workspace=workspace).stdout)
    assert after["ModelPackageVersion"] == 2 and not after.get("UnfinishedBake")
