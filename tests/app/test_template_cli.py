"""The SageMaker project template's commands (`run-pipeline`, `get-pipeline-definition`) with
the exact command line of the template's buildspec, and the admin's SageMaker defaults
(SAGEMAKER_ADMIN_CONFIG_OVERRIDE) in the definition we build."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml
from moto import mock_aws

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROJECT = {"SAGEMAKER_PROJECT_NAME": "bikes", "SAGEMAKER_PROJECT_ID": "p-abc123",
           "SAGEMAKER_PROJECT_ARN": "arn:aws:sagemaker:eu-west-1:123456789012:project/bikes",
           "SAGEMAKER_PIPELINE_ROLE_ARN": "arn:aws:iam::123456789012:role/sm",
           "ARTIFACT_BUCKET": "sagemaker-project-p-abc123",
           "TRAINING_DATA_URL": "s3://sagemaker-project-p-abc123/data/train/",
           "TEST_SOURCE_KEY": "deploy/model-build-source.zip", "AWS_REGION": "us-east-1"}
NAME_ID = "bikes-p-abc123"
PROJECT_TAGS = [{"Key": "sagemaker:project-name", "Value": "bikes"},
                {"Key": "sagemaker:project-id", "Value": "p-abc123"}]


@pytest.fixture(scope="module")
def buildspec_argv(tmp_path_factory) -> list[str]:
    """run-pipeline's argv exactly as codebuild-buildspec.yml's build phase passes it (the
    commands run in bash with run-pipeline replaced by a recorder)."""
    folder = tmp_path_factory.mktemp("recorder")
    recorder = folder / "run-pipeline"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    recorder.chmod(0o755)
    # the build's `scones data snapshot` of TRAINING_DATA_URL, answering as --json does
    (folder / "scones").write_text(
        f"#!{sys.executable}\nimport json\nprint(json.dumps({{'DataSnapshotUrl': "
        f"'s3://sagemaker-project-p-abc123/data/snapshots/{'ab' * 32}/'}}))\n")
    (folder / "scones").chmod(0o755)
    (folder / "python").symlink_to(sys.executable)
    buildspec = yaml.safe_load((REPO / "codebuild-buildspec.yml").read_text())
    done = subprocess.run(["bash", "-ec", "\n".join(buildspec["phases"]["build"]["commands"])],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{folder}:/usr/bin:/bin", **PROJECT})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[0])


def _steps(definition: dict) -> dict[str, dict]:
    return {step["Name"]: step.get("Arguments", {}) for step in definition["Steps"]}


@pytest.mark.slow  # the SageMaker SDK builds a whole definition
def test_get_pipeline_definition_takes_the_buildspecs_kwargs_and_tags(buildspec_argv, tmp_path):
    # get-pipeline-definition takes what run-pipeline does, bar the role to run as
    argv = list(buildspec_argv)
    del argv[argv.index("--role-arn"):argv.index("--role-arn") + 2]
    out = tmp_path / "pipeline.json"
    done = subprocess.run([str(BIN / "get-pipeline-definition"), *argv, "--env", "local",
                           "-f", str(out)], capture_output=True, text=True, timeout=180,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    steps = _steps(json.loads(out.read_text()))
    # base_job_prefix names every job; the project's tags are on every job
    assert steps["Preprocess"]["ProcessingJobName"] == f"{NAME_ID}-preprocess"
    assert steps["Train"]["TrainingJobName"] == f"{NAME_ID}-train"
    assert steps["Evaluate"]["ProcessingJobName"] == f"{NAME_ID}-evaluate"
    for name in ("Preprocess", "Train", "Evaluate"):
        assert sorted(steps[name]["Tags"], key=str) == sorted(PROJECT_TAGS, key=str), name
    assert steps["Train"]["RoleArn"] == PROJECT["SAGEMAKER_PIPELINE_ROLE_ARN"]
    assert steps["Preprocess"]["ProcessingInputs"][0]["S3Input"]["S3Uri"] == {
        "Get": "Parameters.InputDataUrl"}


def test_an_unknown_kwarg_is_one_line_naming_it(tmp_path):
    done = subprocess.run([str(BIN / "get-pipeline-definition"), "--env", "local",
                           "--kwargs", '{"base_job_prefix": "x", "bogus": 1}'],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        done.stderr.strip().splitlines()[0]]
    assert "unknown pipeline argument(s) bogus" in done.stderr and "Traceback" not in done.stderr
    bad_tags = subprocess.run([str(BIN / "get-pipeline-definition"), "--env", "local",
                               "--tags", '{"Key": "a"}'],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad_tags.returncode == 2 and "--tags must be a JSON list" in bad_tags.stderr


@pytest.mark.slow  # the SageMaker SDK builds and upserts a whole definition
@mock_aws
def test_run_pipeline_with_the_buildspecs_command_line_upserts_a_tagged_pipeline(
        buildspec_argv, aws_credentials, capsys):
    """On the AWS backend (moto): the pipeline is created under the template's name, with
    the project's tags, and started. (--no-wait: moto's executions never finish.)"""
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=PROJECT["ARTIFACT_BUCKET"])
    from app.cli.run_pipeline import main

    assert main([*buildspec_argv, "--no-wait"]) == 0, capsys.readouterr().err
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    pipeline = sagemaker.describe_pipeline(PipelineName=NAME_ID)
    assert pipeline["RoleArn"] == PROJECT["SAGEMAKER_PIPELINE_ROLE_ARN"]
    tags = sagemaker.list_tags(ResourceArn=pipeline["PipelineArn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags} == {t["Key"]: t["Value"] for t in PROJECT_TAGS}
    steps = _steps(json.loads(pipeline["PipelineDefinition"]))
    assert steps["Train"]["TrainingJobName"] == f"{NAME_ID}-train"
    executions = sagemaker.list_pipeline_executions(PipelineName=NAME_ID)
    assert len(executions["PipelineExecutionSummaries"]) == 1


ADMIN_CONFIG = {
    "SchemaVersion": "1.0",
    "SageMaker": {
        "ProcessingJob": {
            "NetworkConfig": {"VpcConfig": {"SecurityGroupIds": ["sg-0a1b2c3d"],
                                            "Subnets": ["subnet-0aaa", "subnet-0bbb"]}},
            "ProcessingOutputConfig": {"KmsKeyId": "arn:aws:kms:us-east-1:123456789012:key/out"},
            "ProcessingResources": {"ClusterConfig": {
                "VolumeKmsKeyId": "arn:aws:kms:us-east-1:123456789012:key/volume"}},
            "Tags": [{"Key": "cost-center", "Value": "ml-platform"}]},
        "TrainingJob": {
            "VpcConfig": {"SecurityGroupIds": ["sg-0a1b2c3d"],
                          "Subnets": ["subnet-0aaa", "subnet-0bbb"]},
            "OutputDataConfig": {"KmsKeyId": "arn:aws:kms:us-east-1:123456789012:key/out"},
            "ResourceConfig": {"VolumeKmsKeyId": "arn:aws:kms:us-east-1:123456789012:key/volume"},
            "Tags": [{"Key": "cost-center", "Value": "ml-platform"}]},
        # an admin who asks for telemetry explicitly: our opt-out still wins
        "PythonSDK": {"Modules": {"TelemetryOptOut": False}},
    },
}


@pytest.mark.slow  # the SageMaker SDK builds a whole definition
def test_admin_sagemaker_defaults_reach_the_definition(tmp_path):
    admin = tmp_path / "admin-config.yaml"
    admin.write_text(yaml.safe_dump(ADMIN_CONFIG))
    user = tmp_path / "user-config.yaml"
    user.write_text("SchemaVersion: '1.0'\n")
    env = {**os.environ, "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(admin),
           "SAGEMAKER_USER_CONFIG_OVERRIDE": str(user)}
    done = subprocess.run([str(BIN / "scones"), "pipeline", "definition"], cwd=REPO,
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    steps = _steps(json.loads(done.stdout))
    for name in ("Preprocess", "Evaluate"):
        arguments = steps[name]
        assert arguments["NetworkConfig"]["VpcConfig"] == {
            "SecurityGroupIds": ["sg-0a1b2c3d"], "Subnets": ["subnet-0aaa", "subnet-0bbb"]}
        assert arguments["ProcessingOutputConfig"]["KmsKeyId"].endswith("key/out")
        assert arguments["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"].endswith(
            "key/volume")
        assert {"Key": "cost-center", "Value": "ml-platform"} in arguments["Tags"]
    train = steps["Train"]
    assert train["VpcConfig"]["Subnets"] == ["subnet-0aaa", "subnet-0bbb"]
    assert train["OutputDataConfig"]["KmsKeyId"].endswith("key/out")
    assert train["ResourceConfig"]["VolumeKmsKeyId"].endswith("key/volume")
    assert {"Key": "cost-center", "Value": "ml-platform"} in train["Tags"]


def test_telemetry_stays_off_on_top_of_the_admin_config(tmp_path, monkeypatch):
    from scones import sdk

    admin = tmp_path / "admin-config.yaml"
    admin.write_text(yaml.safe_dump(ADMIN_CONFIG))
    monkeypatch.setenv("SAGEMAKER_ADMIN_CONFIG_OVERRIDE", str(admin))
    user = tmp_path / "user-config.yaml"
    user.write_text("SchemaVersion: '1.0'\n")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(user))
    sdk.sagemaker_defaults_config.cache_clear()
    try:
        merged = sdk.sagemaker_defaults_config()
        assert merged["SageMaker"]["PythonSDK"]["Modules"]["TelemetryOptOut"] is True
        assert merged["SageMaker"]["TrainingJob"] == ADMIN_CONFIG["SageMaker"]["TrainingJob"]
        # loaded once per process: every session gets the same dict
        assert sdk.sagemaker_defaults_config() is merged
        from sagemaker.telemetry.telemetry_logging import TELEMETRY_OPT_OUT_PATH
        from sagemaker.utils import resolve_value_from_config

        class Session:  # what the telemetry decorator reads from a session
            sagemaker_config = merged

        assert resolve_value_from_config(config_path=TELEMETRY_OPT_OUT_PATH,
                                         default_value=False,
                                         sagemaker_session=Session()) is True
        # a different (invalid) config is still validated by the SDK
        from sagemaker.utils import get_sagemaker_config_value

        class Broken:
            sagemaker_config = {"SchemaVersion": "1.0", "SageMaker": {"NoSuchThing": 1}}

        with pytest.raises(Exception):
            get_sagemaker_config_value(Broken(), "SageMaker.NoSuchThing")
    finally:
        sdk.sagemaker_defaults_config.cache_clear()


@pytest.mark.slow  # the SageMaker SDK builds a whole definition
def test_an_unreadable_admin_config_is_one_named_error(tmp_path):
    env = {**os.environ, "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(tmp_path / "missing.yaml")}
    done = subprocess.run([str(BIN / "scones"), "pipeline", "definition"], cwd=REPO,
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert "error: the SageMaker defaults config cannot be used" in done.stderr
    assert "SAGEMAKER_ADMIN_CONFIG_OVERRIDE" in done.stderr
