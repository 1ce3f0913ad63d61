"""The README's AWS road, rehearsed in order against moto (issue 14, "What to build" 4).

    1. `scones infra package`: the real command, its bundle uploaded to a (moto) bucket;
    2. the stack: every resource moto's CloudFormation implements is created by moto's
       CloudFormation from the packaged template, with the packaged parameters.json (the
       deployable part: the resources whose type moto models and whose Ref/GetAtt/Sub reach
       only such resources; `deployable_part`). The rest is named here (STATIC_ONLY) and is
       proven statically elsewhere: cfn-lint and checkov (test_project_template.py), the
       roles' policies against every call (test_iam_proof.py), the deploy and bulk state
       machines' definitions (test_deploy_flow.py);
    4. the approval event: SageMaker's "Model Package State Change" event, matched by moto's
       EventBridge against the stack's own ModelApprovedRule pattern;
    5. the deploy state machine in moto's Step Functions interpreter, started by that
       event: staging, test, manual approval token, prod (test_project_template._Deployer);
    6. the promoted version's own ConfidenceThreshold (registry metadata) set by that
       state machine on the prod workflow's Lambdas, and applied by the filter Lambda's
       real handler with the environment moto's Lambda then holds.

Stubs (what moto lacks):
  - moto's CloudFormation does not implement CodeBuild, CodePipeline, SageMaker model
    package groups, CloudWatch alarms, EventBridge Scheduler, the SQS/SNS/S3 policies nor
    IAM Policy resources: those are STATIC_ONLY, never created;
  - SageMaker UpdateEndpoint (absent from moto) and the staging test's CodeBuild task
    (moto has no CodeBuild builds): _Deployer's stubs, kept as they are; moto's aws-sdk
    tasks leave boto3's datetimes in the state, which moto then cannot serialise: they are
    made text, as Step Functions hands them on (_timestamps_as_text);
  - the Lambdas of step 6 are created with a placeholder zip and never invoked by moto
    (moto's Lambda runs code in Docker); the filter's real handler runs in-process.

Not rehearsed yet (steps 3 and 7 of the issue): CodeBuild's buildspec commands against
moto (test_project_template.test_codebuild_runs_the_buildspec_with_the_templates_command
runs them with run-pipeline recorded, not executed), and a bulk run on the project stack's
bulk state machine (tests/workflow/test_bulk.py runs the same SDK-built definition in the
local engine, not the stack's).
"""
from __future__ import annotations

import json
import re

import boto3
import pytest
from moto import mock_aws

from iam_proof import Resolved
from test_project_template import _Deployer  # the deploy state machine in moto, reused

PROJECT = {"name": "scones-team1", "id": "p-a1b2c3d4e5f6"}
CODE_BUCKET = "scones-team1-code"
REGION = "us-east-1"

# What moto's CloudFormation (5.2.5) cannot create, and where each is proven instead.
STATIC_ONLY = {
    "ArtifactBucketPolicy", "DeadLetterQueuePolicy", "NotificationTopicPolicy",
    "SageMakerExecutionRolePassSelf", "MonitoringJobPolicy",       # policies: iam proof
    "DeadLetterAlarm", "DeployFailedAlarm", "DriftAlarm", "ProdInvocation5xxAlarm",
    "ProdModelLatencyAlarm", "StagingInvocation5xxAlarm", "StagingModelLatencyAlarm",
    "ModelBuildPipeline", "ModelBuildPipelineRole", "ModelBuildProject",
    "ModelBuildSourceRule", "ModelBuildSourceRuleRole", "StagingTestProject",
    "ModelPackageGroup", "MonitoringJobSchedule", "RetrainingSchedule",
    "NotificationEmailSubscription",
    # they reference a resource above (GetAtt/Ref), so moto cannot create them either
    "DeployStateMachine", "DeployStateMachineRole", "DriftAlarmRetrainRule",
    "ModelApprovedRule", "ModelApprovedRuleRole",
}


def _references(node):
    """The logical names a node's Ref, Fn::GetAtt and Fn::Sub reach."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                yield value
            elif key == "Fn::GetAtt":
                yield value[0] if isinstance(value, list) else value.split(".")[0]
            elif key == "Fn::Sub":
                text, variables = (value, {}) if isinstance(value, str) else value
                yield from (m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text))
                yield from _references(variables)
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def deployable_part(template: dict) -> dict:
    """The template restricted to what moto's CloudFormation can create: resources of a
    type it models whose references stay inside that set; outputs likewise."""
    from moto.cloudformation.parsing import get_model_map

    resources, modelled = template["Resources"], get_model_map()
    kept = {k for k, r in resources.items() if r["Type"] in modelled}
    while True:
        unreachable = {k for k in kept
                       if any(r in resources and r not in kept for r in _references(resources[k]))}
        if not unreachable:
            break
        kept -= unreachable
    inside = lambda node: all(r not in resources or r in kept for r in _references(node))  # noqa: E731
    return {**template, "Resources": {k: v for k, v in resources.items() if k in kept},
            "Outputs": {k: v for k, v in template.get("Outputs", {}).items() if inside(v)}}


@pytest.mark.slow
def test_step_1_2_package_then_the_stack_from_its_template_and_parameters(
        run_scones, tmp_path, aws_credentials):
    out = tmp_path / "bundle"
    packaged = run_scones("infra", "package", "--out", str(out), "--bucket", CODE_BUCKET,
                          "--project-name", PROJECT["name"], "--project-id", PROJECT["id"])
    assert packaged.returncode == 0, packaged.stderr
    template_url = json.loads((out / "package.json").read_text())["template_url"]
    parameters = json.loads((out / "parameters.json").read_text())
    uploads = json.loads((out / "uploads.json").read_text())
    template = json.loads((out / "sagemaker-project.json").read_text())

    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=CODE_BUCKET)
        for url, path in uploads.items():   # what the README's `aws s3 cp` lines do
            bucket, _, key = url.removeprefix("s3://").partition("/")
            s3.upload_file(path, bucket, key)
        assert template_url.endswith(next(u for u in uploads if u.endswith(
            "sagemaker-project.json")).split("/", 3)[3])

        part = deployable_part(template)
        assert set(template["Resources"]) - set(part["Resources"]) == STATIC_ONLY
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        cloudformation.create_stack(StackName="scones-team1", TemplateBody=json.dumps(part),
                                    Parameters=parameters, Capabilities=["CAPABILITY_IAM"])
        stack = cloudformation.describe_stacks(StackName="scones-team1")["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        created = {r["LogicalResourceId"]: r for r in cloudformation.list_stack_resources(
            StackName="scones-team1")["StackResourceSummaries"]
            if r["LogicalResourceId"]}   # moto lists a resource whose condition is off as ''
        given = {p["ParameterKey"]: p["ParameterValue"] for p in parameters}
        conditioned_in = Resolved(template, given).resources   # as CloudFormation decides
        assert set(created) == set(part["Resources"]) & set(conditioned_in)
        assert len(created) >= 30
        assert all(r["ResourceStatus"] == "CREATE_COMPLETE" for r in created.values())
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        assert outputs["ArtifactBucketName"] == f"sagemaker-project-{PROJECT['id']}"
        assert outputs["ModelPackageGroupName"] == f"{PROJECT['name']}-{PROJECT['id']}"

        # the Lambdas run the packaged zips from the uploaded keys
        lambdas = boto3.client("lambda", region_name=REGION)
        prefix = next(p["ParameterValue"] for p in parameters
                      if p["ParameterKey"] == "LambdaCodeKeyPrefix")
        for logical, resource in part["Resources"].items():
            if resource["Type"] == "AWS::Lambda::Function":
                name = created[logical]["PhysicalResourceId"]
                function = lambdas.get_function(FunctionName=name)
                assert function["Configuration"]["Runtime"].startswith("python3")
                key = resource["Properties"]["Code"]["S3Key"]["Fn::Sub"].replace(
                    "${LambdaCodeKeyPrefix}", prefix)
                assert f"s3://{CODE_BUCKET}/{key}" in uploads, key
        machines = {m["name"] for m in boto3.client(
            "stepfunctions", region_name=REGION).list_state_machines()["stateMachines"]}
        assert machines == {"scones-team1-inference", "scones-team1-inference-bulk"}
        assert s3.head_bucket(Bucket=outputs["ArtifactBucketName"])


def test_step_4_the_approval_event_matches_the_stacks_rule(aws_credentials):
    from infra.project_template import project_template
    from scones.config import load_config

    resolved = Resolved(project_template(load_config("local")),
                        {"SageMakerProjectName": PROJECT["name"],
                         "SageMakerProjectId": PROJECT["id"]})
    pattern = resolved.properties("ModelApprovedRule")["EventPattern"]
    group = f"{PROJECT['name']}-{PROJECT['id']}"
    event = {"id": "1", "account": "123456789012", "time": "2026-12-07T16:00:00Z",
             "region": REGION, "resources": [], "source": "aws.sagemaker",
             "detail-type": "SageMaker Model Package State Change",
             "detail": {"ModelPackageGroupName": group, "ModelApprovalStatus": "Approved",
                        "ModelPackageArn": f"arn:aws:sagemaker:{REGION}:123456789012:"
                                           f"model-package/{group}/1"}}
    with mock_aws():   # the rule delivers to a queue standing in for the state machine
        events = boto3.client("events", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        queue = sqs.create_queue(QueueName="deploy-starts")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        events.put_rule(Name="model-approved", EventPattern=json.dumps(pattern))
        events.put_targets(Rule="model-approved", Targets=[{"Id": "q", "Arn": queue_arn}])
        others = [{**event["detail"], "ModelApprovalStatus": "Rejected"},
                  {**event["detail"], "ModelPackageGroupName": "someone-elses"}]
        for detail in [event["detail"], *others]:
            events.put_events(Entries=[{"Source": event["source"],
                                        "DetailType": event["detail-type"],
                                        "Detail": json.dumps(detail)}])
        delivered = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
        assert [json.loads(m["Body"])["detail"] for m in delivered] == [event["detail"]]


@pytest.mark.slow
def test_step_5_the_deploy_state_machine_staging_test_approval_prod():
    from infra.project_template import project_template
    from scones.config import load_config

    with _Deployer(project_template(load_config("local"))) as aws:
        version = aws.approved_version()
        waiting = aws.settle(aws.start(version))
        assert waiting["status"] == "RUNNING"
        assert {"StagingCreateEndpoint", "StagingTest"} <= set(waiting["entered"])
        assert aws.serving("staging") == "bikes-p-abc123-staging-v1"
        token = aws.approval_token()
        assert token["modelPackageArn"] == version
        aws.sfn.send_task_success(taskToken=token["taskToken"], output="{}")
        done = aws.settle(waiting["executionArn"], to_end=True)
        assert done["status"] == "SUCCEEDED" and done["entered"][-1] == "DeployedToProd"
        assert aws.serving("prod") == "bikes-p-abc123-prod-v1"


@pytest.mark.slow
def test_step_6_prod_applies_the_promoted_versions_own_threshold(monkeypatch):
    """The version's ConfidenceThreshold (registry metadata) reaches the prod filter Lambda's
    environment through the deploy state machine, and the filter's real handler applies it:
    an inference the default 0.8 would pass is refused at the version's 0.93."""
    from infra.project_template import project_template
    from lambdas import filter_inferences
    from lambdas.errors import ThresholdConfidenceNotMet
    from scones.config import load_config

    with _Deployer(project_template(load_config("local")), workflow=True) as aws:
        assert "bikes-filter-inferences" in aws.threshold_functions
        version = aws.approved_version(
            CustomerMetadataProperties={"ConfidenceThreshold": "0.93"})
        waiting = aws.settle(aws.start(version))
        aws.sfn.send_task_success(taskToken=aws.approval_token()["taskToken"], output="{}")
        done = aws.settle(waiting["executionArn"], to_end=True)
        assert done["status"] == "SUCCEEDED", done
        assert "ProdApplyThreshold1" in done["entered"]
        lambdas = boto3.client("lambda", region_name=REGION)
        environment = {name: lambdas.get_function_configuration(FunctionName=name)[
            "Environment"]["Variables"] for name in aws.threshold_functions}
    assert {e["CONFIDENCE_THRESHOLD"] for e in environment.values()} == {"0.93"}
    for key, value in environment["bikes-filter-inferences"].items():
        monkeypatch.setenv(key, value)
    event = {"s3_bucket": "b", "s3_key": "incoming/1.png", "image_data": "",
             "inferences": [0.9, 0.1]}
    with pytest.raises(ThresholdConfidenceNotMet):
        filter_inferences.lambda_handler(event, None)
    confident = filter_inferences.lambda_handler({**event, "inferences": [0.95, 0.05]}, None)
    assert confident["predicted_label"] == "bicycle"
