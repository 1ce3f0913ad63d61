"""Deploying the Lambdas and the state machine against moto: create, re-deploy (no-op),
update on change, never duplicate."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from lambdas.build import PACKAGE_DIR, build_lambda_zips, code_sha256
from scones.backend import LAMBDA_RUNTIME
from scones.config import load_config
from scones.errors import SconesError
from workflow.definition import lambda_functions, workflow_definition
from infra.workflow_boto3 import deploy_workflow

TRUST = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]},
    "Action": "sts:AssumeRole"}]})


@pytest.fixture
def aws(aws_credentials, monkeypatch):
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        iam = boto3.client("iam")
        roles = {name: iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
                 for name in ("scones-lambda", "scones-states")}
        yield {"lambda": boto3.client("lambda"), "sfn": boto3.client("stepfunctions"),
               "roles": roles}


def make_config(aws, **overrides):
    return load_config("local", {"aws.lambda_role_arn": aws["roles"]["scones-lambda"],
                                 "aws.states_role_arn": aws["roles"]["scones-states"],
                                 **overrides})


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    config = load_config("local")
    return build_lambda_zips(tmp_path_factory.mktemp("zips"), keys=lambda_functions(config))


def all_functions(client) -> list[dict]:
    return [f for page in client.get_paginator("list_functions").paginate()
            for f in page["Functions"]]


def test_deploy_creates_then_redeploys_as_a_no_op(aws, zips):
    config = make_config(aws)
    first = deploy_workflow(config, zips, aws["lambda"], aws["sfn"])
    assert {f["action"] for f in first["functions"].values()} == {"created"}
    assert first["state_machine"]["action"] == "created"

    deployed = {f["FunctionName"]: f for f in all_functions(aws["lambda"])}
    for key, function in lambda_functions(config).items():
        current = deployed[function.name]
        assert current["Runtime"] == LAMBDA_RUNTIME and current["Handler"] == function.handler
        assert current["Role"] == aws["roles"]["scones-lambda"]
        assert current.get("Environment", {}).get("Variables", {}) == function.environment
        assert (current["Timeout"], current["MemorySize"]) == (function.timeout,
                                                               function.memory_size)
        assert current["CodeSha256"] == code_sha256(zips[key])
    machine = aws["sfn"].describe_state_machine(stateMachineArn=first["state_machine"]["arn"])
    assert json.loads(machine["definition"]) == workflow_definition(config)
    assert machine["roleArn"] == aws["roles"]["scones-states"]

    second = deploy_workflow(config, zips, aws["lambda"], aws["sfn"])
    assert {f["action"] for f in second["functions"].values()} == {"unchanged"}
    assert second["state_machine"]["action"] == "unchanged"
    assert {k: f["arn"] for k, f in second["functions"].items()} == \
        {k: f["arn"] for k, f in first["functions"].items()}
    assert second["state_machine"]["arn"] == first["state_machine"]["arn"]
    assert len(all_functions(aws["lambda"])) == 7  # the workflow's three, the deploy one, the bulk three
    assert len(aws["sfn"].list_state_machines()["stateMachines"]) == 1


def test_redeploy_updates_only_what_changed(aws, zips, tmp_path):
    config = make_config(aws)
    first = deploy_workflow(config, zips, aws["lambda"], aws["sfn"])

    # New code for one function (same module, one more comment line) and a new threshold.
    package = tmp_path / "lambdas"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(package / "filter_inferences.py", "a") as source:
        source.write("# changed\n")
    changed_zips = {**zips, **build_lambda_zips(tmp_path / "zips", keys=["filter_inferences"],
                                                package_dir=package)}
    config = make_config(aws, **{"workflow.confidence_threshold": 0.93})
    result = deploy_workflow(config, changed_zips, aws["lambda"], aws["sfn"])
    filter_result = result["functions"]["filter_inferences"]
    assert filter_result["action"] == "updated"
    assert filter_result["changes"] == ["Code", "Environment"]
    assert result["functions"]["serialize_image_data"]["action"] == "unchanged"
    assert result["functions"]["classify_image"]["action"] == "unchanged"
    current = aws["lambda"].get_function(FunctionName=filter_result["name"])["Configuration"]
    assert current["CodeSha256"] == code_sha256(changed_zips["filter_inferences"])
    assert current["Environment"]["Variables"]["CONFIDENCE_THRESHOLD"] == "0.93"
    assert filter_result["arn"] == first["functions"]["filter_inferences"]["arn"]


def test_redeploy_replaces_a_stale_state_machine_definition(aws, zips):
    config = make_config(aws)
    first = deploy_workflow(config, zips, aws["lambda"], aws["sfn"])
    arn = first["state_machine"]["arn"]
    stale = {"StartAt": "Old", "States": {"Old": {"Type": "Pass", "End": True}}}
    aws["sfn"].update_state_machine(stateMachineArn=arn, definition=json.dumps(stale))

    result = deploy_workflow(config, zips, aws["lambda"], aws["sfn"])
    assert result["state_machine"] == {"name": config.workflow.state_machine_name, "arn": arn,
                                       "action": "updated", "changes": ["definition"]}
    machine = aws["sfn"].describe_state_machine(stateMachineArn=arn)
    assert json.loads(machine["definition"]) == workflow_definition(config)
    assert len(aws["sfn"].list_state_machines()["stateMachines"]) == 1


@pytest.mark.parametrize("missing", ["lambda_role_arn", "states_role_arn"])
def test_missing_roles_are_named_and_nothing_is_created(aws, zips, missing):
    config = make_config(aws, **{f"aws.{missing}": None})
    with pytest.raises(SconesError, match=f"aws.{missing} is not set"):
        deploy_workflow(config, zips, aws["lambda"], aws["sfn"])
    assert all_functions(aws["lambda"]) == []
    assert aws["sfn"].list_state_machines()["stateMachines"] == []


def test_missing_zip_is_refused_before_anything_is_created(aws, zips):
    partial = {k: v for k, v in zips.items() if k != "classify_image"}
    with pytest.raises(SconesError, match="no zip for Lambda function.*classify_image"):
        deploy_workflow(make_config(aws), partial, aws["lambda"], aws["sfn"])
    assert all_functions(aws["lambda"]) == []


def test_zips_without_a_table_entry_are_reported_not_deployed(aws, zips, tmp_path):
    extra = tmp_path / "something_else.zip"
    extra.write_bytes(Path(zips["filter_inferences"]).read_bytes())
    result = deploy_workflow(make_config(aws), {**zips, "something_else": extra},
                             aws["lambda"], aws["sfn"])
    assert result["not_deployed"] == ["something_else"]
    assert len(all_functions(aws["lambda"])) == 7  # the workflow's three, the deploy one, the bulk three


def test_aws_errors_become_scones_errors_naming_the_function(aws, zips, monkeypatch):
    config = make_config(aws, **{"aws.lambda_role_arn":
                                 "arn:aws:iam::123456789012:role/does-not-exist"})
    with pytest.raises(SconesError, match="creating Lambda function scones-serialize-image-data"):
        deploy_workflow(config, zips, aws["lambda"], aws["sfn"])


def test_cli_deploy_in_env_aws_creates_then_reports_unchanged(aws, capsys):
    from app.cli.main import main

    args = ["workflow", "deploy", "--env", "aws",
            "--set", "data.input_url=s3://scones-data/train",
            "--set", "aws.role_arn=arn:aws:iam::123456789012:role/sagemaker",
            "--set", "aws.bucket=scones-data",
            "--set", f"aws.lambda_role_arn={aws['roles']['scones-lambda']}",
            "--set", f"aws.states_role_arn={aws['roles']['scones-states']}"]
    assert main(args + ["--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["state_machine"]["action"] == "created"
    # one deploy path for every function of the project, as the CloudFormation template has
    assert sorted(created["functions"]) == ["classify_image", "classify_image_batch",
                                            "deploy_approved_model", "filter_inferences",
                                            "plan_image_batches", "serialize_image_data",
                                            "summarize_bulk_run"]
    assert main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "kind", "action", "changed"]
    rows = [line.split() for line in table[2:]]
    assert len(rows) == 8 and all(row[-1] == "unchanged" for row in rows)  # 7 functions + SM
    assert max(len(line) for line in table) <= 100
    assert len(all_functions(aws["lambda"])) == 7  # the workflow's three, the deploy one, the bulk three
