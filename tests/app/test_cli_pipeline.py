"""`scones pipeline ...` and `scones registry ...` as a user runs them: subprocesses, real
definition, real images, exit codes and --json shapes. One real pipeline run (the register
branch) is shared by the module's tests."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import copy_image_subset
from helpers import scones as run_scones

# Each test takes tens of seconds: pipeline runs through the CLI (training included).
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


def scones(workspace: Path, *args: str, data: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI with a quick training (2 epochs) and, given data, that input folder."""
    settings = {"training.epochs": 2, "training.batch_size": 16,
                **({"data.input_url": data} if data else {})}
    return run_scones(*args, workspace=workspace, settings=settings)


@pytest.fixture(scope="module")
def ran(tmp_path_factory, sample_data_dir):
    """One real run down the register branch (AccuracyThreshold=0 always passes)."""
    root = tmp_path_factory.mktemp("cli")
    data = copy_image_subset(sample_data_dir, root / "images", per_class=40)
    workspace = root / "ws"
    result = scones(workspace, "pipeline", "run", "--json", "--param", "AccuracyThreshold=0",
                    data=data)
    return workspace, data, result


def test_run_json_is_one_object_on_stdout_and_exit_zero(ran):
    _, _, result = ran
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout)
    assert set(output) == {"ExecutionId", "ExecutionArn", "Status", "Steps", "FailureReason",
                           "ModelPackageVersion"}
    assert output["Status"] == "Succeeded" and output["FailureReason"] is None
    # a script can approve what it just built
    assert output["ModelPackageVersion"] == 1
    assert [(s["Name"], s["Status"]) for s in output["Steps"]] == [
        ("Preprocess", "Succeeded"), ("Train", "Succeeded"), ("Evaluate", "Succeeded"),
        ("Baseline", "Succeeded"), ("CheckAccuracy", "Succeeded"),
        ("Register-RegisterModel", "Succeeded")]
    assert all(set(s) == {"Name", "Type", "Status", "Seconds", "FailureReason",
                          "CacheHitResult"} for s in output["Steps"])
    # live progress went to stderr, including the training epochs as they happened
    assert "Train | epoch 1/2" in result.stderr


def test_registered_version_is_pending_with_its_model_on_disk(ran):
    workspace, _, _ = ran
    listed = scones(workspace, "registry", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    packages = json.loads(listed.stdout)
    assert [(p["ModelPackageVersion"], p["ModelApprovalStatus"]) for p in packages] == \
        [(1, "PendingManualApproval")]
    shown = scones(workspace, "registry", "show", "1", "--json")
    package = json.loads(shown.stdout)
    assert Path(package["LocalModelData"]).is_file()
    assert package["LocalModelData"].endswith("/output/model.tar.gz")
    assert 0 <= package["Accuracy"] <= 1
    assert package["ModelPackageArn"].endswith("model-package/scones-delivery-vehicles/1")
    # the threshold train.py chose on validation travels with the version
    threshold = float(package["CustomerMetadataProperties"]["ConfidenceThreshold"])
    assert 0.5 <= threshold <= 1
    # lineage: the data snapshot it learnt from (the folder, snapshotted) and its parent
    properties = package["CustomerMetadataProperties"]
    assert properties["DataSnapshotUrl"].startswith("s3://scones-local/data/snapshots/")
    assert properties["ParentDataSnapshotUrl"] == "none"
    human = scones(workspace, "registry", "list")
    assert "PendingManualApproval" in human.stdout and human.returncode == 0


def test_registered_version_carries_its_monitoring_baseline(ran):
    """The Baseline step's statistics.json/constraints.json are registered with the version
    (DriftCheckBaselines and ModelMetrics' ModelDataQuality), in Model Monitor's layout."""
    workspace, _, _ = ran
    package = json.loads(scones(workspace, "registry", "show", "1", "--json").stdout)
    baselines = package["DriftCheckBaselines"]["ModelDataQuality"]
    assert package["ModelMetrics"]["ModelDataQuality"] == baselines
    store = workspace / "s3"
    documents = {}
    for kind in ("Statistics", "Constraints"):
        url = baselines[kind]["S3Uri"]
        assert url.startswith("s3://") and url.endswith(f"/{kind.lower()}.json")
        documents[kind] = json.loads((store / url[len("s3://"):]).read_text())
    statistics = documents["Statistics"]
    names = {f["name"] for f in statistics["features"]}
    # the decoded image as the model sees it: nothing of the request's size or colour mode
    assert names == {"brightness", "contrast", "colourfulness", "ood_score", "confidence",
                     "predicted_label"}
    assert statistics["dataset"]["item_count"] == 8  # the test split of 2 x 40 images
    assert {f["name"] for f in documents["Constraints"]["features"]} == names


def test_executions_lists_the_run(ran):
    workspace, _, result = ran
    listed = scones(workspace, "pipeline", "executions", "--json")
    executions = json.loads(listed.stdout)
    assert executions[0]["ExecutionId"] == json.loads(result.stdout)["ExecutionId"]
    assert executions[0]["Status"] == "Succeeded"
    assert executions[0]["Parameters"]["AccuracyThreshold"] == 0.0
    assert len(executions[0]["Steps"]) == 6
    human = scones(workspace, "pipeline", "executions")
    # per-step status, one row per execution, within 100 columns
    assert "Preprocess:ok" in human.stdout and "Register-RegisterModel:ok" in human.stdout
    assert max(len(line) for line in human.stdout.splitlines()) <= 100


def test_approve_deploys_locally_and_reject_needs_a_reason(ran):
    workspace, _, _ = ran
    approved = scones(workspace, "registry", "approve", "1", "--description", "good enough")
    assert approved.returncode == 0, approved.stderr
    assert "Approved" in approved.stdout
    # an approval goes to staging; prod follows after the staging test (endpoint promote)
    state = json.loads((workspace / "endpoints" /
                        "scones-delivery-vehicles-staging.json").read_text())
    assert state["ModelPackageVersion"] == 1 and state["EndpointStatus"] == "InService"
    assert not (workspace / "endpoints" / "scones-delivery-vehicles.json").exists()
    again = scones(workspace, "registry", "approve", "1")
    assert again.returncode == 0 and "already Approved" in again.stdout

    no_reason = scones(workspace, "registry", "reject", "1")
    assert no_reason.returncode == 2 and "--description" in no_reason.stderr
    rejected = scones(workspace, "registry", "reject", "1", "--description", "drift")
    assert rejected.returncode == 0 and "Rejected" in rejected.stdout
    shown = json.loads(scones(workspace, "registry", "show", "1", "--json").stdout)
    assert (shown["ModelApprovalStatus"], shown["ApprovalDescription"]) == ("Rejected", "drift")


def test_unknown_version_is_one_error_line(ran):
    workspace, _, _ = ran
    result = scones(workspace, "registry", "show", "42")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: model package group scones-delivery-vehicles has "
                                     f"no version 42 (registry {workspace}/registry.sqlite)")


def test_failed_run_exits_non_zero_with_the_reason(ran, tmp_path):
    workspace, data, _ = ran
    result = scones(workspace, "pipeline", "run", "--json",
                    "--param", f"InputDataUrl={tmp_path / 'no-such-folder'}", data=data)
    assert result.returncode == 1
    output = json.loads(result.stdout)
    assert output["Status"] == "Failed" and output["ModelPackageVersion"] is None
    assert [(s["Name"], s["Status"]) for s in output["Steps"]] == [("Preprocess", "Failed")]
    assert "no-such-folder" in output["FailureReason"]


def test_definition_prints_the_sagemaker_json(tmp_path):
    result = scones(tmp_path / "ws", "pipeline", "definition")
    assert result.returncode == 0, result.stderr
    definition = json.loads(result.stdout)
    assert definition["Version"] == "2020-12-01"
    assert [s["Type"] for s in definition["Steps"]] == [
        "Processing", "Training", "Processing", "Processing", "Condition"]


def test_retry_of_an_unknown_execution_is_one_error_line(ran):
    workspace, _, _ = ran
    result = scones(workspace, "pipeline", "retry", "nosuchexec")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: no pipeline execution 'nosuchexec' in "
                                     f"{workspace}/registry.sqlite (list them: scones pipeline "
                                     "executions)")


def test_retry_on_aws_calls_retry_pipeline_execution_for_a_failed_one(monkeypatch):
    """moto has no RetryPipelineExecution: botocore's Stubber checks the calls against
    SageMaker's API model instead."""
    import boto3
    from botocore.stub import ANY, Stubber

    from pipelines.executors import pipeline_executor
    from scones.backend import backend_for
    from scones.config import load_config
    from scones.errors import SconesError

    config = load_config("aws", overrides={
        "aws.role_arn": "arn:aws:iam::123456789012:role/r", "aws.bucket": "b",
        "data.input_url": "s3://b/in"})
    backend = backend_for(config)
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    monkeypatch.setattr(backend, "client", lambda service: client)
    arn = ("arn:aws:sagemaker:us-east-1:123456789012:pipeline/scones-delivery-vehicles/"
           "execution/abc123")
    with Stubber(client) as stub:
        stub.add_response("list_pipeline_executions", {"PipelineExecutionSummaries": [
            {"PipelineExecutionArn": arn, "PipelineExecutionStatus": "Failed"}]},
            {"PipelineName": "scones-delivery-vehicles"})
        stub.add_response("describe_pipeline_execution", {"PipelineExecutionStatus": "Failed"},
                          {"PipelineExecutionArn": arn})
        stub.add_response("retry_pipeline_execution", {"PipelineExecutionArn": arn},
                          {"PipelineExecutionArn": arn, "ClientRequestToken": ANY})
        stub.add_response("describe_pipeline_execution",
                          {"PipelineExecutionStatus": "Executing"},
                          {"PipelineExecutionArn": arn})
        stub.add_response("list_pipeline_execution_steps", {"PipelineExecutionSteps": [
            {"StepName": "Preprocess", "StepStatus": "Succeeded",
             "CacheHitResult": {"SourcePipelineExecutionArn": arn}}]},
            {"PipelineExecutionArn": arn, "SortOrder": "Ascending"})
        result = pipeline_executor(backend).retry("abc123", progress=False)
        assert (result["ExecutionArn"], result["Status"]) == (arn, "Executing")
        assert result["Steps"][0]["CacheHitResult"] == {"SourcePipelineExecutionArn": arn}

        stub.add_response("describe_pipeline_execution",
                          {"PipelineExecutionStatus": "Succeeded"},
                          {"PipelineExecutionArn": arn})
        with pytest.raises(SconesError, match="abc123 is Succeeded: only a Failed or Stopped"):
            pipeline_executor(backend).retry(arn, progress=False)
        stub.assert_no_pending_responses()
