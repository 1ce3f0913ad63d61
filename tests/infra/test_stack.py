"""`scones infra deploy` / `scones workflow deploy`: the one path by which the project's
resources reach AWS (infra/stack.py). S3 is moto's; CloudFormation is a botocore Stubber on
a real client: moto's CloudFormation cannot create this template (it has no CodeBuild,
CodePipeline, Scheduler or ModelPackageGroup resources to resolve Fn::GetAtt against)."""
from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from infra.stack import StackDeployError, deploy_stack
from scones.config import load_config

BUCKET = "bundle-bucket"
MISSING = {"Error": {"Code": "ValidationError", "Message": "Stack with id p does not exist"}}


@pytest.fixture
def aws(aws_credentials):
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        cloudformation = boto3.client("cloudformation", region_name="us-east-1")
        with Stubber(cloudformation) as stub:
            yield s3, cloudformation, stub


def _stack(status: str, parameters: dict, outputs: dict | None = None) -> dict:
    return {"Stacks": [{"StackName": "p", "CreationTime": "2026-12-07T00:00:00Z",
                        "StackStatus": status,
                        "Parameters": [{"ParameterKey": k, "ParameterValue": v}
                                       for k, v in parameters.items()],
                        "Outputs": [{"OutputKey": k, "OutputValue": v}
                                    for k, v in (outputs or {}).items()]}]}


def test_a_new_stack_is_created_from_the_uploaded_template(aws, tmp_path):
    s3, cloudformation, stub = aws
    stub.add_client_error("describe_stacks", "ValidationError", MISSING["Error"]["Message"])
    stub.add_response("create_stack", {"StackId": "arn:aws:cloudformation:us-east-1:1:stack/p/1"},
                      {"StackName": "p", "TemplateURL": ANY, "Capabilities": ["CAPABILITY_IAM"],
                       "Parameters": ANY, "Tags": ANY})
    done = _stack("CREATE_COMPLETE", {}, {"ArtifactBucketName": "sagemaker-project-p-1"})
    stub.add_response("describe_stacks", done, {"StackName": "p"})   # the waiter
    stub.add_response("describe_stacks", done, {"StackName": "p"})   # the outputs
    result = deploy_stack(load_config("local"), cloudformation, s3, stack_name="p",
                          project_name="bikes", project_id="p-1", out_dir=tmp_path,
                          bucket=BUCKET, with_source=False)
    stub.assert_no_pending_responses()
    assert (result["action"], result["status"]) == ("created", "CREATE_COMPLETE")
    assert result["outputs"] == {"ArtifactBucketName": "sagemaker-project-p-1"}
    # the template CloudFormation reads is the one uploaded, byte for byte
    key = result["template_url"].split(".amazonaws.com/", 1)[1]
    uploaded = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert uploaded == (tmp_path / "sagemaker-project.json").read_bytes()
    assert len(uploaded) > 51_200   # hence by URL, not in the request body


def test_an_update_keeps_the_stacks_other_parameters_and_no_change_is_no_error(aws, tmp_path):
    s3, cloudformation, stub = aws
    existing = _stack("CREATE_COMPLETE", {"SageMakerProjectName": "bikes",
                                          "SageMakerProjectId": "p-1",
                                          "NotificationEmail": "ops@example.com",
                                          "LambdaCodeKeyPrefix": "lambdas/old/"})
    seen = {}
    stub.add_response("describe_stacks", existing, {"StackName": "p"})
    stub.add_client_error("update_stack", "ValidationError",
                          "No updates are to be performed.")
    cloudformation.meta.events.register(
        "provide-client-params.cloudformation.UpdateStack",
        lambda params, **_: seen.update(params))
    result = deploy_stack(load_config("local"), cloudformation, s3, stack_name="p",
                          out_dir=tmp_path, bucket=BUCKET, with_source=False)
    assert result["action"] == "unchanged"
    parameters = {p["ParameterKey"]: p for p in seen["Parameters"]}
    # the project's name and id come from the stack; what the bundle sets is new
    assert parameters["SageMakerProjectName"]["ParameterValue"] == "bikes"
    assert parameters["SageMakerProjectId"]["ParameterValue"] == "p-1"
    assert parameters["LambdaCodeKeyPrefix"]["ParameterValue"] != "lambdas/old/"
    # what someone set on the stack survives
    assert parameters["NotificationEmail"] == {"ParameterKey": "NotificationEmail",
                                               "UsePreviousValue": True}


def test_creating_needs_a_project_id_and_a_refusal_is_one_named_error(aws, tmp_path):
    s3, cloudformation, stub = aws
    stub.add_client_error("describe_stacks", "ValidationError", MISSING["Error"]["Message"])
    with pytest.raises(StackDeployError, match="--project-id"):
        deploy_stack(load_config("local"), cloudformation, s3, stack_name="p",
                     out_dir=tmp_path, bucket=BUCKET, with_source=False)
    stub.add_client_error("describe_stacks", "ValidationError", MISSING["Error"]["Message"])
    stub.add_client_error("create_stack", "InsufficientCapabilitiesException",
                          "Requires capabilities : [CAPABILITY_NAMED_IAM]")
    with pytest.raises(StackDeployError, match="creating stack p: Requires capabilities"):
        deploy_stack(load_config("local"), cloudformation, s3, stack_name="p",
                     project_id="p-1", out_dir=tmp_path / "2", bucket=BUCKET,
                     with_source=False)


def test_workflow_deploy_and_infra_deploy_are_the_same_stack_command(run_scones, tmp_path):
    for command in (["workflow", "deploy"], ["infra", "deploy"]):
        result = run_scones(*command, "--help")
        assert result.returncode == 0
        assert "--stack-name" in result.stdout and "--project-id" in result.stdout
    # the local environment talks to no AWS: one line saying so
    local = run_scones("infra", "deploy", "--project-id", "p-1", "--bucket", BUCKET,
                       workspace=tmp_path)
    assert local.returncode != 0
    assert "Traceback" not in local.stderr and "--env aws" in local.stderr
