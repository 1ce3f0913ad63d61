"""The pipeline definition's shape and wiring, its template CLIs, and upsert/start on moto."""
import json
import subprocess
import sys

import boto3
import pytest
from moto import mock_aws

from scones.config import load_config
from scones.errors import SconesError
from pipelines.executors import pipeline_executor
from pipelines.pipeline import ACCURACY_JSON_PATH, pipeline_definition
from scones.backend import backend_for
from scones.storage import LocalObjectStore


@pytest.fixture(scope="module")
def local_config(tmp_path_factory):
    return load_config("local", overrides={
        "local.workspace": str(tmp_path_factory.mktemp("ws"))})


@pytest.fixture(scope="module")
def definition(local_config):
    return pipeline_definition(local_config)


def steps_by_name(definition):
    steps = {}
    for step in definition["Steps"]:
        steps[step["Name"]] = step
        for branch in ("IfSteps", "ElseSteps"):
            for inner in step.get("Arguments", {}).get(branch, []):
                steps[inner["Name"]] = inner
    return steps


def test_parameters(definition, local_config):
    params = {p["Name"]: p for p in definition["Parameters"]}
    assert set(params) >= {"InputDataUrl", "ProcessingInstanceType", "TrainingInstanceType",
                           "Epochs", "LearningRate", "AccuracyThreshold", "ModelApprovalStatus"}
    assert params["ModelApprovalStatus"]["DefaultValue"] == "PendingManualApproval"
    assert params["Epochs"]["Type"] == "Integer"
    assert params["AccuracyThreshold"]["Type"] == "Float"
    # the configured folder, as an immutable data snapshot in the bucket (scones/snapshots.py)
    default = params["InputDataUrl"]["DefaultValue"]
    assert default.startswith("s3://scones-local/data/snapshots/") and default.endswith("/")
    from scones.snapshots import load_snapshot

    snapshot = load_snapshot(backend_for(local_config).object_store(), default)
    assert snapshot.manifest["source"] == local_config.data.input_url
    assert snapshot.counts() == {"bicycle": 500, "motorcycle": 500}


def test_steps_are_wired_preprocess_train_evaluate_condition(definition):
    steps = steps_by_name(definition)
    assert [s["Name"] for s in definition["Steps"]] == [
        "Preprocess", "Train", "Evaluate", "Baseline", "CheckAccuracy"]
    assert {n: s["Type"] for n, s in steps.items()} == {
        "Preprocess": "Processing", "Train": "Training", "Evaluate": "Processing",
        "Baseline": "Processing",
        "CheckAccuracy": "Condition", "Register-RegisterModel": "RegisterModel",
        "AccuracyBelowThreshold": "Fail"}

    train = steps["Train"]["Arguments"]
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in train["InputDataConfig"]}
    assert channels == {
        split: {"Get": f"Steps.Preprocess.ProcessingOutputConfig.Outputs['{split}']"
                       ".S3Output.S3Uri"} for split in ("train", "validation")}
    assert json.loads(train["HyperParameters"]["sagemaker_program"]) == "train.py"
    assert {m["Name"] for m in train["AlgorithmSpecification"]["MetricDefinitions"]} >= {
        "train_loss", "validation_accuracy"}

    evaluate = steps["Evaluate"]["Arguments"]
    sources = {i["InputName"]: i["S3Input"]["S3Uri"] for i in evaluate["ProcessingInputs"]}
    assert {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"} in sources.values()
    assert steps["Evaluate"]["PropertyFiles"][0]["PropertyFileName"] == "EvaluationReport"

    condition = steps["CheckAccuracy"]["Arguments"]["Conditions"][0]
    assert condition["Type"] == "GreaterThanOrEqualTo"
    assert condition["LeftValue"]["Std:JsonGet"]["Path"] == ACCURACY_JSON_PATH
    assert condition["RightValue"] == {"Get": "Parameters.AccuracyThreshold"}


def test_register_and_fail_branches(definition):
    steps = steps_by_name(definition)
    register = steps["Register-RegisterModel"]["Arguments"]
    assert register["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    container = register["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert set(register["InferenceSpecification"]["SupportedContentTypes"]) >= {
        "image/png", "image/jpeg"}
    assert register["ModelMetrics"]["ModelQuality"]["Statistics"]["ContentType"] == \
        "application/json"
    message = json.dumps(steps["AccuracyBelowThreshold"]["Arguments"]["ErrorMessage"])
    assert ACCURACY_JSON_PATH in message and "Parameters.AccuracyThreshold" in message


def test_uploaded_code_is_in_the_workspace_object_store(definition, local_config):
    store = LocalObjectStore(local_config.local.workspace / "s3")
    code_urls = [i["S3Input"]["S3Uri"] for s in definition["Steps"] if s["Type"] == "Processing"
                 for i in s["Arguments"]["ProcessingInputs"] if i["InputName"] == "code"]
    train = steps_by_name(definition)["Train"]["Arguments"]["HyperParameters"]
    code_urls.append(json.loads(train["sagemaker_submit_directory"]))
    assert len(code_urls) == 4  # preprocess, evaluate, baseline, training source dir
    profile = [i["S3Input"]["S3Uri"] for i in steps_by_name(definition)["Baseline"]["Arguments"]
               ["ProcessingInputs"] if i["InputName"] == "profile"]
    for url in code_urls + profile:
        assert store.path_for(url).is_file(), url


def test_get_pipeline_definition_cli_writes_the_same_definition(tmp_path, local_config):
    out = tmp_path / "definition.json"
    kwargs = json.dumps({"pipeline_name": "scones-cli-test"})
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli.get_pipeline_definition", "--env", "local",
         "--kwargs", kwargs, "-f", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "INFO" not in proc.stderr
    written = json.loads(out.read_text())
    assert [s["Name"] for s in written["Steps"]][0] == "Preprocess"
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli.get_pipeline_definition", "--env", "local",
         "--kwargs", "{not json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --kwargs is not valid JSON")


@pytest.fixture
def aws_config():
    return load_config("aws", overrides={
        "aws.role_arn": "arn:aws:iam::123456789012:role/scones-sagemaker",
        "aws.bucket": "scones-test-bucket",
        "data.input_url": "s3://scones-test-bucket/data/train"})


@mock_aws
def test_upsert_and_start_on_moto_is_idempotent(aws_config):
    boto_session = boto3.Session(region_name=aws_config.aws.region)
    boto_session.client("s3").create_bucket(Bucket=aws_config.aws.bucket)
    executor = pipeline_executor(backend_for(aws_config))
    first = executor.run(parameters={"Epochs": 3})
    second = executor.run()
    sm = boto_session.client("sagemaker")
    pipeline_arn = sm.describe_pipeline(PipelineName=aws_config.pipeline.name)["PipelineArn"]
    for result in (first, second):  # each a started execution of the one pipeline
        assert result["ExecutionArn"].startswith(f"{pipeline_arn}/execution/")
        assert result["ExecutionId"] == result["ExecutionArn"].rpartition("/")[2]
        assert result["Status"] == "Succeeded"  # moto's executions end at once
    assert first["ExecutionArn"] != second["ExecutionArn"]
    # the parameters went to the execution they were given for, and only to it
    given = {arn: sm.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)[
        "PipelineParameters"] for arn in (first["ExecutionArn"], second["ExecutionArn"])}
    assert given[first["ExecutionArn"]] == [{"Name": "Epochs", "Value": "3"}]
    assert given[second["ExecutionArn"]] == []
    pipelines = sm.list_pipelines()["PipelineSummaries"]
    assert [p["PipelineName"] for p in pipelines] == [aws_config.pipeline.name]
    stored = json.loads(sm.describe_pipeline(PipelineName=aws_config.pipeline.name)
                        ["PipelineDefinition"])
    assert stored["Steps"][0]["Name"] == "Preprocess"
    executions = sm.list_pipeline_executions(PipelineName=aws_config.pipeline.name)
    assert len(executions["PipelineExecutionSummaries"]) == 2
    with pytest.raises(SconesError, match="unknown pipeline parameter.*Epoch.*known"):
        executor.run(parameters={"Epoch": 3})


@mock_aws
def test_object_store_reads_and_lists_s3_as_the_local_store_does(tmp_path):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="scones-b")
    local = backend_for(load_config("local", overrides={"local.workspace": str(tmp_path)})
                        ).object_store()
    remote = backend_for(load_config("aws", overrides={
        "aws.role_arn": "arn:aws:iam::1:role/r", "aws.bucket": "scones-b",
        "data.input_url": "s3://scones-b/in"})).object_store()
    for key in ("in/a.png", "in/sub/b.png", "other/c.png"):
        s3.put_object(Bucket="scones-b", Key=key, Body=key.encode())
        local.write_bytes(f"s3://scones-b/{key}", key.encode())
    s3.put_object(Bucket="scones-b", Key="in/folder/", Body=b"")  # a console "folder" marker
    for store in (local, remote):
        assert store.list_urls("s3://scones-b/in/") == ["s3://scones-b/in/a.png", "s3://scones-b/in/sub/b.png"]
        assert store.read_bytes("s3://scones-b/in/sub/b.png") == b"in/sub/b.png"


def test_the_local_definition_is_kept_while_its_key_and_uploads_are_the_same(
        local_config, definition, monkeypatch):
    """`scones pipeline definition` a second time needs neither the SDK nor moto: the
    definition built for the same key is reused, while the code it points at is there."""
    import dataclasses

    from scones.local.pipeline_runner import pipelines_api as executor

    def built_again(*args, **kwargs):
        raise AssertionError("the definition was built again")

    with monkeypatch.context() as patched:
        patched.setattr(executor, "local_pipeline_session", built_again)
        assert pipeline_definition(local_config) == definition
    kept = json.loads(next((local_config.local.workspace / "cache" / "pipeline-definitions")
                           .glob("*.json")).read_text())
    store = backend_for(local_config).object_store()
    assert kept["Uploads"] and all(store.exists(url) for url in kept["Uploads"])
    # an upload gone from the object store: built (and uploaded) again, the same definition
    store.path_for(kept["Uploads"][0]).unlink()
    assert pipeline_definition(local_config) == definition
    assert store.exists(kept["Uploads"][0])
    # another config value: another key, never the kept definition
    other = local_config.replace(training=dataclasses.replace(
        local_config.training, epochs=local_config.training.epochs + 1))
    assert pipeline_definition(other) != definition
