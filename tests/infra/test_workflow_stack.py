"""The CloudFormation template: cfn-lint clean, least-privilege IAM, wired to the same
definitions the local default runs, and the committed copy equal to the generator's output."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lambdas.deploy_approved_model import DeploySettings
from scones.backend import LAMBDA_RUNTIME
from scones.config import load_config
from workflow.definition import workflow_definition_json
from workflow.bulk import bulk_definition_json
from infra.workflow_stack import (DEPLOY_FUNCTION_KEY, TEMPLATE_PATH, cloudformation_template,
                            template_json, unscoped_resources, wildcard_actions)

REPO = Path(__file__).resolve().parents[2]
CFN_LINT = Path(sys.executable).with_name("cfn-lint")


@pytest.fixture(scope="module")
def config():
    return load_config("local")


@pytest.fixture(scope="module")
def template(config):
    return cloudformation_template(config)


def _of_type(template, kind):
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def test_committed_template_is_the_generators_output(config):
    assert TEMPLATE_PATH.read_text() == template_json(config), (
        f"{TEMPLATE_PATH} is stale: regenerate it with "
        f"`scones infra template --out {TEMPLATE_PATH.relative_to(REPO)}`")


def test_cfn_lint_finds_nothing(config, tmp_path):
    generated = tmp_path / "template.json"
    generated.write_text(template_json(config))
    done = subprocess.run([str(CFN_LINT), str(generated)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cfn_lint_would_catch_a_broken_template(template, tmp_path):
    broken = copy.deepcopy(template)
    broken["Resources"]["InferenceStateMachine"]["Properties"]["RoleArn"] = {
        "Fn::GetAtt": ["NoSuchRole", "Arn"]}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    done = subprocess.run([str(CFN_LINT), str(path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0 and "NoSuchRole" in done.stdout


def test_no_wildcard_actions_and_resources_scoped(template):
    assert wildcard_actions(template) == []
    assert unscoped_resources(template) == []
    roles = _of_type(template, "AWS::IAM::Role")
    assert set(roles) == {"WorkflowLambdaRole", "DeployLambdaRole", "StateMachineRole",
                          "NewImageEventsRole", "BulkLambdaRole", "BulkStateMachineRole"}
    for name, role in roles.items():
        for policy in role["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                assert statement["Effect"] == "Allow" and statement["Resource"], name
        assert "ManagedPolicyArns" not in role["Properties"], name  # nothing broad attached
    # the checkers themselves flag what they are for
    planted = copy.deepcopy(template)
    statements = planted["Resources"]["WorkflowLambdaRole"]["Properties"]["Policies"][0][
        "PolicyDocument"]["Statement"]
    statements.append({"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"})
    statements.append({"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource":
                       {"Fn::Sub": "arn:${AWS::Partition}:sagemaker:${AWS::Region}:"
                                   "${AWS::AccountId}:*"}})
    assert wildcard_actions(planted) == ["WorkflowLambdaRole: s3:*"]
    assert len(unscoped_resources(planted)) == 2


def test_policies_name_this_projects_resources(template, config):
    text = json.dumps(template["Resources"]["WorkflowLambdaRole"])
    assert f"endpoint/{config.workflow.endpoint_name}\"" in text
    assert "arn:${AWS::Partition}:s3:::${BucketName}/*" in text
    deploy = json.dumps(template["Resources"]["DeployLambdaRole"])
    assert f"model-package/{config.pipeline.model_package_group}/*" in deploy
    assert "iam:PassedToService" in deploy and "SageMakerExecutionRoleArn" in deploy
    invoke = template["Resources"]["StateMachineRole"]["Properties"]["Policies"][0][
        "PolicyDocument"]["Statement"][0]["Resource"]
    targets = {r["Fn::GetAtt"][0] for r in invoke if "Fn::GetAtt" in r}
    assert targets == {"SerializeImageDataFunction", "ClassifyImageFunction",
                       "FilterInferencesFunction"}  # not the deploy function


def test_functions_state_machine_and_rules_are_wired(template, config):
    functions = _of_type(template, "AWS::Lambda::Function")
    handlers = {f["Properties"]["Handler"] for f in functions.values()}
    assert handlers == {f"lambdas.{k}.lambda_handler" for k in (
        "serialize_image_data", "classify_image", "filter_inferences", DEPLOY_FUNCTION_KEY,
        "plan_image_batches", "classify_image_batch", "summarize_bulk_run")}
    for function in functions.values():
        code = function["Properties"]["Code"]
        assert code["S3Key"]["Fn::Sub"].startswith("${CodeKeyPrefix}")
        assert function["Properties"]["Runtime"] == LAMBDA_RUNTIME
    machine = template["Resources"]["InferenceStateMachine"]["Properties"]
    assert machine["DefinitionString"] == workflow_definition_json(config)
    assert machine["StateMachineName"] == config.workflow.state_machine_name
    bulk = template["Resources"]["BulkStateMachine"]["Properties"]
    assert bulk["DefinitionString"] == bulk_definition_json(config)
    assert bulk["RoleArn"] == {"Fn::GetAtt": ["BulkStateMachineRole", "Arn"]}
    bulk_invoke = template["Resources"]["BulkStateMachineRole"]["Properties"]["Policies"][0][
        "PolicyDocument"]["Statement"][0]["Resource"]
    assert {r["Fn::GetAtt"][0] for r in bulk_invoke if "Fn::GetAtt" in r} == {
        "PlanImageBatchesFunction", "ClassifyImageBatchFunction", "SummarizeBulkRunFunction"}
    for key in ("PlanImageBatchesFunction", "ClassifyImageBatchFunction",
                "SummarizeBulkRunFunction"):
        assert template["Resources"][key]["Properties"]["Role"] == {
            "Fn::GetAtt": ["BulkLambdaRole", "Arn"]}

    approval = template["Resources"]["ModelApprovedRule"]["Properties"]
    assert approval["EventPattern"] == {
        "source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"],
        "detail": {"ModelPackageGroupName": [config.pipeline.model_package_group],
                   "ModelApprovalStatus": ["Approved"]}}
    assert approval["Targets"][0]["Arn"] == {"Fn::GetAtt": ["DeployApprovedModelFunction", "Arn"]}
    permission = template["Resources"]["ModelApprovedInvokePermission"]["Properties"]
    assert permission["SourceArn"] == {"Fn::GetAtt": ["ModelApprovedRule", "Arn"]}
    assert permission["Principal"] == "events.amazonaws.com"

    new_image = template["Resources"]["NewImageRule"]["Properties"]
    assert new_image["EventPattern"]["detail-type"] == ["Object Created"]
    target = new_image["Targets"][0]
    assert target["Arn"] == {"Ref": "InferenceStateMachine"}
    # EventBridge puts each value in as JSON where its unquoted placeholder stands
    transformer = target["InputTransformer"]
    event = {"detail": {"bucket": {"name": "scones-bucket"},
                        "object": {"key": "incoming/bike 1.png"}}}
    filled = transformer["InputTemplate"]
    for name, path in transformer["InputPathsMap"].items():
        value = event
        for part in path.removeprefix("$.").split("."):
            value = value[part]
        filled = filled.replace(f"<{name}>", json.dumps(value))
    assert json.loads(filled) == {"s3_bucket": "scones-bucket", "s3_key": "incoming/bike 1.png",
                                  "image_data": "", "inferences": []}


def test_deploy_function_environment_is_what_the_lambda_reads(template):
    variables = template["Resources"]["DeployApprovedModelFunction"]["Properties"][
        "Environment"]["Variables"]
    parameters = {"SageMakerExecutionRoleArn": "arn:aws:iam::123456789012:role/sm"}

    def resolve(value):  # as CloudFormation would, for the two parameters used
        if isinstance(value, str):
            return value
        if "Ref" in value:
            return parameters[value["Ref"]]
        return value["Fn::Sub"].replace("${BucketName}", "scones-bucket")

    resolved = {key: resolve(value) for key, value in variables.items()}
    settings = DeploySettings.from_environ(resolved)
    assert settings.data_capture_s3_uri == "s3://scones-bucket/datacapture"
    assert settings.execution_role_arn.startswith("arn:aws:iam::")


def test_every_template_function_has_a_built_zip_and_the_deploy_zip_imports(template, tmp_path):
    from lambdas.build import build_lambda_zips

    zips = build_lambda_zips(tmp_path, keys=None)
    keys = {f["Properties"]["Code"]["S3Key"]["Fn::Sub"].removeprefix("${CodeKeyPrefix}")
            .removesuffix(".zip")
            for f in _of_type(template, "AWS::Lambda::Function").values()}
    assert keys <= set(zips)
    done = subprocess.run(
        [sys.executable, "-S", "-c", "import lambdas.deploy_approved_model as m; print(m.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(zips[DEPLOY_FUNCTION_KEY]),
             "PYTHONNOUSERSITE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(zips[DEPLOY_FUNCTION_KEY]))


def test_cli_writes_the_template(tmp_path):
    out = tmp_path / "t.json"
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "app.cli.main", "infra", "template",
                           "--out", str(out)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and out.read_text() == TEMPLATE_PATH.read_text()
