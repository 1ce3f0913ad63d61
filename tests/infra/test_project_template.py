"""The SageMaker Project template (scones/infra): AWS's own checkers on it (cfn-lint,
checkov), and what it must contain, read from the template as CloudFormation would
resolve it. What stays unproven without an AWS account is listed in the project's report,
not asserted here."""
from __future__ import annotations

import copy
import time
import uuid
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from unittest import mock
from pathlib import Path

import boto3
import pytest
import yaml
from moto import mock_aws
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.\
    state_task_service_aws_sdk import StateTaskServiceAwsSdk

from scones.config import load_config
from infra import deploy_state_machine
from infra.package import PackagingError, package, upload, workflow_function_keys
from infra.project_template import (BUILDSPEC, LAMBDA_RUNTIME, PIPELINE_ARN,
                                    PIPELINE_ARN_PATTERN, PIPELINE_NAME, TEMPLATE_PATH,
                                    project_template, resolve_conditions, template_json)
from workflow.definition import check_definition, workflow_definition_json

REPO = Path(__file__).resolve().parents[2]
CFN_LINT = Path(sys.executable).with_name("cfn-lint")
CHECKOV = REPO / ".venv-tools" / "bin" / "checkov"
PROJECT_TAG_KEYS = {"sagemaker:project-name", "sagemaker:project-id"}
ALL_CONDITIONS_ON = {"HasKmsKey": True, "UseCodeConnection": True, "UseS3Source": False,
                     "HasNewDataMarker": True, "RetrainOnScheduleEnabled": True,
                     "RetrainOnNewDataEnabled": True, "StagingCanary": True,
                     "ProdCanary": True, "DeployWorkflow": True,
                     "HasMonitoringSchedule": True, "StagingShiftsAllAtOnce": False,
                     "ProdShiftsAllAtOnce": False}
DEFAULTS = {"HasKmsKey": False, "UseCodeConnection": False, "UseS3Source": True,
            "HasNewDataMarker": True, "RetrainOnScheduleEnabled": False,
            "RetrainOnNewDataEnabled": False, "StagingCanary": False, "ProdCanary": True,
            "StagingShiftsAllAtOnce": False, "ProdShiftsAllAtOnce": False,
            "DeployWorkflow": False}


@pytest.fixture(scope="module")
def config():
    return load_config("local")


@pytest.fixture(scope="module")
def template(config):
    return project_template(config)


def _of_type(template, kind):
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def _statements(template):
    """(resource id, statement) of every identity policy, conditional ones included."""
    found = []
    resolved = resolve_conditions(template, ALL_CONDITIONS_ON)
    for name, resource in resolved["Resources"].items():
        properties = resource["Properties"]
        if resource["Type"] == "AWS::IAM::Role":
            documents = [p["PolicyDocument"] for p in properties.get("Policies", [])]
        elif resource["Type"] == "AWS::IAM::RolePolicy":
            documents = [properties["PolicyDocument"]]
        else:
            continue
        for document in documents:
            found += [(name, s) for s in document["Statement"]
                      if s != {"Ref": "AWS::NoValue"}]
    return found


def _as_list(value):
    return value if isinstance(value, list) else [value]


def test_committed_template_is_the_generators_output(config):
    assert TEMPLATE_PATH.read_text() == template_json(config), (
        f"{TEMPLATE_PATH} is stale: regenerate it with "
        "`python -c 'from scones.config import load_config; from infra."
        "project_template import write_template; write_template(load_config())'`")


def test_cfn_lint_finds_nothing_and_would_catch_a_broken_definition(template, tmp_path):
    good = tmp_path / "template.json"
    good.write_text(json.dumps(template))
    broken = copy.deepcopy(template)
    broken["Resources"]["DeployStateMachine"]["Properties"]["Definition"]["States"][
        "ProdWaitForRollout"]["Seconds"] = "sixty"
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps(broken))
    done = subprocess.run([str(CFN_LINT), str(good)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([str(CFN_LINT), str(bad)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0 and "E3601" in done.stdout, done.stdout


def test_checkov_fails_nothing_unjustified(template, tmp_path):
    if not CHECKOV.exists():
        pytest.skip(f"checkov is not installed in {CHECKOV.parent.parent} "
                    "(`make tools` creates it; `make test` does so first)")
    (tmp_path / "project.json").write_text(json.dumps(template))
    planted = copy.deepcopy(template)   # the scan itself must notice what it is for
    del planted["Resources"]["ArtifactBucket"]["Properties"]["PublicAccessBlockConfiguration"]
    (tmp_path / "planted.json").write_text(json.dumps(planted))
    done = subprocess.run(
        [str(CHECKOV), "-d", str(tmp_path), "--framework", "cloudformation", "--quiet",
         "--compact", "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    report = json.loads(done.stdout)
    failed = report["results"]["failed_checks"]
    by_file = {}
    for check in failed:
        by_file.setdefault(Path(check["file_path"]).name, []).append(
            f"{check['check_id']} {check['resource']}")
    assert "project.json" not in by_file, by_file["project.json"]
    assert any(c.startswith("CKV_AWS_5") and "ArtifactBucket" in c
               for c in by_file["planted.json"]), by_file
    # every skip carries its reason in the template
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV_AWS_\d+", skip["id"]) and len(skip["comment"]) > 20, name


def test_project_parameters_and_tags(template):
    parameters = template["Parameters"]
    assert {"SageMakerProjectName", "SageMakerProjectId"} <= set(parameters)
    assert "Default" not in parameters["SageMakerProjectName"]
    # every resource type whose CloudFormation schema has Tags carries the project's tags
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    untagged = []
    for name, resource in template["Resources"].items():
        schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", resource["Type"])
        if "Tags" in schema.schema.get("properties", {}):
            tags = resource["Properties"].get("Tags", [])
            if {t["Key"] for t in tags} != PROJECT_TAG_KEYS:
                untagged.append(name)
    assert untagged == []
    assert len(_of_type(template, "AWS::IAM::Role")) >= 8  # taggable types were checked


def test_bucket_execution_role_and_model_package_group(template):
    bucket = template["Resources"]["ArtifactBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    encryption = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    resolved = resolve_conditions(encryption, {"HasKmsKey": True})
    assert resolved["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Ref": "KmsKeyArn"}}
    assert resolve_conditions(encryption, {"HasKmsKey": False})[
        "ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    tls, = template["Resources"]["ArtifactBucketPolicy"]["Properties"]["PolicyDocument"][
        "Statement"]
    assert tls["Effect"] == "Deny" and tls["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}}

    role = template["Resources"]["SageMakerExecutionRole"]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": ["sagemaker.amazonaws.com"]}
    group = _of_type(template, "AWS::SageMaker::ModelPackageGroup")
    assert list(group) == ["ModelPackageGroup"]
    assert group["ModelPackageGroup"]["Properties"]["ModelPackageGroupName"] == {
        "Fn::Sub": PIPELINE_NAME}


def test_no_wildcard_actions_and_the_workflow_gaps_are_closed(template):
    statements = _statements(template)
    assert len(statements) > 30
    wildcard = [f"{r}: {a}" for r, s in statements for a in _as_list(s["Action"]) if "*" in a]
    assert wildcard == []
    # '*' resources only where the action has no resource to name
    star = sorted({a for r, s in statements if s["Resource"] == "*"
                   for a in _as_list(s["Action"])})
    # (the monitoring job finds a version's package by listing: no resource-level permission)
    assert star == ["cloudwatch:PutMetricData", "ecr:GetAuthorizationToken",
                    "sagemaker:ListModelPackages"]

    workflow = {s["Sid"]: s for r, s in statements if r == "WorkflowLambdaRole"}
    assert workflow["ListImages"]["Action"] == ["s3:ListBucket"]
    assert workflow["ListImages"]["Resource"] == {"Fn::GetAtt": ["ArtifactBucket", "Arn"]}
    assert workflow["UseProjectKey"] == {"Sid": "UseProjectKey", "Effect": "Allow",
                                         "Action": ["kms:Decrypt"],
                                         "Resource": {"Ref": "KmsKeyArn"}}
    without_key = resolve_conditions(template, {"HasKmsKey": False})
    policy = without_key["Resources"]["WorkflowLambdaRole"]["Properties"]["Policies"][0]
    assert not any("kms:Decrypt" in json.dumps(s) for s in policy["PolicyDocument"][
        "Statement"] if s != {"Ref": "AWS::NoValue"})


def test_codebuild_runs_the_buildspec_with_the_templates_command(template, tmp_path):
    project = template["Resources"]["ModelBuildProject"]["Properties"]
    assert project["Source"] == {"Type": "CODEPIPELINE", "BuildSpec": BUILDSPEC}
    stages = template["Resources"]["ModelBuildPipeline"]["Properties"]["Stages"]
    assert stages[1]["Actions"][0]["Configuration"] == {"ProjectName": {
        "Ref": "ModelBuildProject"}}
    source = stages[0]["Actions"][0]["Fn::If"]
    assert source[0] == "UseCodeConnection"
    assert source[1]["ActionTypeId"]["Provider"] == "CodeStarSourceConnection"
    assert source[2]["ActionTypeId"]["Provider"] == "S3"

    # run the buildspec's build commands in bash, run-pipeline replaced by a recorder
    buildspec = yaml.safe_load((REPO / BUILDSPEC).read_text())
    assert "pip install --no-deps ." in buildspec["phases"]["install"]["commands"]
    values = {"SAGEMAKER_PROJECT_NAME": "bikes", "SAGEMAKER_PROJECT_ID": "p-abc123",
              "SAGEMAKER_PROJECT_ARN": "arn:aws:sagemaker:eu-west-1:123456789012:project/bikes",
              "SAGEMAKER_PIPELINE_ROLE_ARN": "arn:aws:iam::123456789012:role/sm",
              "ARTIFACT_BUCKET": "sagemaker-project-p-abc123",
              "TRAINING_DATA_URL": "s3://sagemaker-project-p-abc123/data/train/",
              "TEST_SOURCE_KEY": "deploy/model-build-source.zip"}
    names = {v["Name"] for v in project["Environment"]["EnvironmentVariables"]}
    assert names == set(values)  # every variable the buildspec reads is set by the stack
    recorder = tmp_path / "run-pipeline"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    recorder.chmod(0o755)
    # `scones data snapshot` answers as the real one does with --json
    snapshot = "s3://sagemaker-project-p-abc123/data/snapshots/" + "ab" * 32 + "/"
    (tmp_path / "scones").write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(tmp_path / 'scones.argv')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        f"print(json.dumps({{'DataSnapshotUrl': {snapshot!r}}}))\n")
    (tmp_path / "scones").chmod(0o755)
    (tmp_path / "python").symlink_to(sys.executable)
    script = "\n".join(buildspec["phases"]["build"]["commands"])
    done = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin", "AWS_REGION": "eu-west-1",
                               **values})
    assert done.returncode == 0, done.stderr
    argv = json.loads(done.stdout.splitlines()[0])
    # the build trains on a snapshot of the labelled images, made first
    assert json.loads((tmp_path / "scones.argv").read_text())[:5] == [
        "data", "snapshot", values["TRAINING_DATA_URL"], "--env", "aws"]
    from app.cli.run_pipeline import _parser

    args = _parser().parse_args(argv)
    assert args.module_name == "pipelines.pipeline"
    assert args.role_arn == values["SAGEMAKER_PIPELINE_ROLE_ARN"]
    assert json.loads(args.tags) == [{"Key": "sagemaker:project-name", "Value": "bikes"},
                                     {"Key": "sagemaker:project-id", "Value": "p-abc123"}]
    kwargs = json.loads(args.kwargs)
    name_id = "bikes-p-abc123"   # the template's pipeline and model package group name
    assert kwargs == {"region": "eu-west-1", "role": values["SAGEMAKER_PIPELINE_ROLE_ARN"],
                      "default_bucket": values["ARTIFACT_BUCKET"], "pipeline_name": name_id,
                      "model_package_group_name": name_id, "base_job_prefix": name_id,
                      "sagemaker_project_name": "bikes",
                      "sagemaker_project_arn": values["SAGEMAKER_PROJECT_ARN"],
                      "input_data_url": snapshot}
    assert PIPELINE_NAME.replace("${SageMakerProjectName}", "bikes").replace(
        "${SageMakerProjectId}", "p-abc123") == name_id

    from pipelines.pipeline import config_from_template_kwargs

    built = config_from_template_kwargs(tags=json.loads(args.tags), **kwargs)
    assert built.pipeline.name == name_id and built.aws.bucket == values["ARTIFACT_BUCKET"]
    assert built.pipeline.base_job_prefix == name_id
    assert dict(built.pipeline.tags) == {"sagemaker:project-name": "bikes",
                                         "sagemaker:project-id": "p-abc123"}


MODEL_BUILD_ARN = {"Fn::Sub": "arn:${AWS::Partition}:codepipeline:${AWS::Region}:"
                              "${AWS::AccountId}:${ModelBuildPipeline}"}


def test_retraining_schedule_and_data_rule_target_the_pipeline_off_by_default(template):
    defaults = resolve_conditions(template, DEFAULTS)["Resources"]
    schedule = defaults["RetrainingSchedule"]
    assert schedule["Type"] == "AWS::Scheduler::Schedule"
    rule = defaults["NewDataRule"]
    assert schedule["Properties"]["State"] == "DISABLED"
    assert rule["Properties"]["State"] == "DISABLED"
    on = resolve_conditions(template, ALL_CONDITIONS_ON)["Resources"]
    assert on["RetrainingSchedule"]["Properties"]["State"] == "ENABLED"
    assert on["NewDataRule"]["Properties"]["State"] == "ENABLED"
    for target in (schedule["Properties"]["Target"], rule["Properties"]["Targets"][0]):
        # the model build, which snapshots TrainingDataPrefix and trains on that snapshot:
        # the prefix itself as InputDataUrl would hit SageMaker's step cache (it keys on the
        # URL), and an earlier build's snapshot would not hold the new data
        assert target["Arn"] == MODEL_BUILD_ARN
        assert "SageMakerPipelineParameters" not in target
        assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["DeadLetterQueue",
                                                                     "Arn"]}}
        assert target["RoleArn"] == {"Fn::GetAtt": ["RetrainingRole", "Arn"]}
    retraining = {s["Sid"]: s for r, s in _statements(template) if r == "RetrainingRole"}
    assert retraining["StartModelBuild"]["Action"] == ["codepipeline:StartPipelineExecution"]
    assert retraining["StartModelBuild"]["Resource"] == MODEL_BUILD_ARN
    # one run per batch (its marker object), not one per uploaded image
    key = rule["Properties"]["EventPattern"]["detail"]["object"]["key"]
    assert key == [{"wildcard": {"Fn::Sub": "${TrainingDataPrefix}*${NewDataMarker}"}}]
    # the pipeline parameter the targets set is one the pipeline has
    pipeline_parameters = re.findall(r'ParameterString\("(\w+)"',
                                     (REPO / "pipelines" / "pipeline.py").read_text())
    assert "InputDataUrl" in pipeline_parameters


def test_approval_reaches_a_durable_deploy_with_a_dead_letter_queue(template):
    resources = template["Resources"]
    rule = resources["ModelApprovedRule"]["Properties"]
    assert rule["EventPattern"] == {
        "source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"],
        "detail": {"ModelPackageGroupName": [{"Fn::Sub": PIPELINE_NAME}],
                   "ModelApprovalStatus": ["Approved"]}}
    target, = rule["Targets"]
    assert target["Arn"] == {"Ref": "DeployStateMachine"}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}}
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] == 86400
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 100
    assert resources["DeadLetterQueue"]["Type"] == "AWS::SQS::Queue"
    sender, = resources["DeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert {"Fn::GetAtt": ["ModelApprovedRule", "Arn"]} in sender["Condition"]["ArnEquals"][
        "aws:SourceArn"]
    assert resources["DeployStateMachine"]["Properties"]["StateMachineType"] == "STANDARD"


def test_deploy_goes_staging_test_approval_prod_with_guardrails(template):
    for workflow in (True, False):  # with and without the inference workflow's Lambdas
        definition = resolve_conditions(template, {"DeployWorkflow": workflow})[
            "Resources"]["DeployStateMachine"]["Properties"]["Definition"]
        definition["States"] = {k: v for k, v in definition["States"].items()
                                if v != {"Ref": "AWS::NoValue"}}
        check_definition(definition)  # every target exists, every state is reachable
    states = definition["States"]
    # the order: staging serves it -> test -> manual approval -> prod
    assert states["StagingPutScalingPolicy"]["Next"] == "StagingTest"
    assert states["StagingTest"]["Resource"] == "arn:aws:states:::codebuild:startBuild.sync"
    assert states["StagingTest"]["Next"] == "ManualApproval"
    assert states["ManualApproval"]["Resource"].endswith(":sns:publish.waitForTaskToken")
    assert states["ManualApproval"]["Next"] == "ProdDescribe"
    assert states["ProdPutScalingPolicy"]["Next"] == "DeployedToProd"
    # staging already on this version's config: nothing to deploy, on to its test (a
    # version that failed its test or the approval can be approved again)
    assert states["StagingAlreadyServingCheck"]["Choices"][0] == {
        "Variable": "$.staging.endpoint.ConfigName",
        "StringEqualsPath": "$.settings.staging.ResourceName",
        "Next": "StagingAlreadyServing"}
    assert states["StagingAlreadyServing"] == {**states["StagingAlreadyServing"],
                                               "Type": "Pass", "Next": "StagingTest"}
    # an approval during an update waits for it
    assert states["StagingWaitWhileBusy"]["Next"] == "StagingDescribe"

    alarms = _of_type(template, "AWS::CloudWatch::Alarm")
    alarm_by_name = {json.dumps(a["Properties"].get("AlarmName")): a for a in alarms.values()}
    for stage, routing in (("staging", "LINEAR"), ("prod", "CANARY")):
        cap = stage.capitalize()
        for state in (f"{cap}CreateEndpoint", f"{cap}UpdateEndpoint"):
            config = states[state]["Parameters"]["DeploymentConfig"]
            resolved = resolve_conditions(config, {"StagingCanary": False, "ProdCanary": True,
                                                   "StagingShiftsAllAtOnce": False,
                                                   "ProdShiftsAllAtOnce": False})
            traffic = resolved["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
            assert traffic["Type"] == routing
            assert traffic[{"CANARY": "CanarySize", "LINEAR": "LinearStepSize"}[routing]] == {
                "Type": "CAPACITY_PERCENT", "Value.$": "$.settings.TrafficStepPercent"}
            metrics = set()
            for alarm in resolved["AutoRollbackConfiguration"]["Alarms"]:
                resource = alarm_by_name[json.dumps(alarm["AlarmName"])]["Properties"]
                dimensions = {d["Name"]: d["Value"] for d in resource["Dimensions"]}
                assert dimensions == {"EndpointName": deploy_state_machine.endpoint_name(stage),
                                      "VariantName": "AllTraffic"}
                metrics.add(resource["MetricName"])
            assert metrics == {"Invocation5XXErrors", "ModelLatency"}
        assert template["Parameters"][f"{cap}TrafficRouting"]["Default"] == routing
        # per-stage settings are parameters, read once into the execution as numbers
        settings = states["Settings"]["Parameters"][stage]
        assert settings["InstanceType"] == {"Ref": f"{cap}InstanceType"}
        for name in ("InstanceCount", "CaptureSamplingPercentage", "MinCapacity",
                     "MaxCapacity"):
            assert settings[f"{name}.$"] == {
                "Fn::Sub": f"States.StringToJson('${{{cap}{name}}}')"}
            assert template["Parameters"][f"{cap}{name}"]["Type"] == "Number"
        capture = states[f"{cap}CreateEndpointConfig"]["Parameters"]["DataCaptureConfig"]
        assert capture["EnableCapture"] is True
        assert capture["DestinationS3Uri"] == {
            "Fn::Sub": f"s3://${{ArtifactBucket}}/datacapture/{stage}"}
    # a rollback by the alarms is reported, not taken for success
    assert states["ProdRolloutCheck"]["Choices"][-1]["Next"] == "ProdRolledBack"


def test_workflow_lambdas_and_state_machine_are_workflow_infras(template, config):
    functions = _of_type(template, "AWS::Lambda::Function")
    assert {f["Properties"]["Handler"] for f in functions.values()} == {
        f"lambdas.{k}.lambda_handler"
        for k in ("serialize_image_data", "classify_image", "filter_inferences",
                  "plan_image_batches", "classify_image_batch", "summarize_bulk_run")}
    assert {f["Properties"]["Runtime"] for f in functions.values()} == {LAMBDA_RUNTIME}
    assert all(f["Condition"] == "DeployWorkflow" for f in functions.values())
    classify = functions["ClassifyImageFunction"]["Properties"]
    assert classify["Environment"]["Variables"]["ENDPOINT_NAME"] == {
        "Fn::Sub": "${SageMakerProjectName}-${SageMakerProjectId}-prod"}
    # the ASL is the SDK's, function names aside
    machine = template["Resources"]["InferenceStateMachine"]["Properties"]["Definition"]
    prefix = config.workflow.lambda_prefix

    def back(node):
        if isinstance(node, dict):
            if set(node) == {"Fn::Sub"}:
                return node["Fn::Sub"].replace("${SageMakerProjectName}", prefix)
            return {k: back(v) for k, v in node.items()}
        if isinstance(node, list):
            return [back(v) for v in node]
        return node

    assert back(machine) == json.loads(workflow_definition_json(config))


def test_package_builds_the_zips_the_template_references_and_uploads_them(config, tmp_path):
    result = package(config, tmp_path / "bundle", bucket="project-bucket",
                     project_name="bikes", project_id="p-1234")
    parameters = json.loads((tmp_path / "bundle" / "parameters.json").read_text())
    values = {p["ParameterKey"]: p["ParameterValue"] for p in parameters}
    assert values["LambdaCodeBucket"] == "project-bucket"
    prefix = values["LambdaCodeKeyPrefix"]
    assert re.fullmatch(r"lambdas/[0-9a-f]{16}/", prefix)
    keys = workflow_function_keys(config)
    assert keys == ["classify_image", "classify_image_batch", "filter_inferences",
                    "plan_image_batches", "serialize_image_data", "summarize_bulk_run"]
    expected = {f"s3://project-bucket/{prefix}{k}.zip" for k in keys}
    expected.add("s3://project-bucket/source/scones-mlops.zip")
    # CloudFormation's rules for the README's road: the template is over the 51,200 bytes
    # of --template-body, so it goes to S3 (--template-url, at most 1 MB), and the
    # parameter file names every parameter without a default
    template_file = tmp_path / "bundle" / "sagemaker-project.json"
    assert 51_200 < template_file.stat().st_size < 1_000_000
    template_url, = [u for u in result.uploads if u.endswith("/sagemaker-project.json")]
    assert re.fullmatch(r"s3://project-bucket/templates/[0-9a-f]{16}/sagemaker-project.json",
                        template_url)
    assert result.template_url == template_url.replace(
        "s3://project-bucket/", "https://project-bucket.s3.us-east-1.amazonaws.com/")
    expected.add(template_url)
    no_default = {n for n, p in project_template(config)["Parameters"].items()
                  if "Default" not in p}
    assert no_default == {"SageMakerProjectName", "SageMakerProjectId"}
    assert no_default <= set(values)
    assert (values["SageMakerProjectName"], values["SageMakerProjectId"]) == ("bikes", "p-1234")
    with pytest.raises(PackagingError, match="SageMakerProjectId"):
        package(config, tmp_path / "no-id", bucket="project-bucket", project_name="bikes")
    assert set(result.uploads) == expected
    assert json.loads((tmp_path / "bundle" / "uploads.json").read_text()).keys() == expected
    source = zipfile.ZipFile(result.uploads["s3://project-bucket/source/scones-mlops.zip"])
    names = set(source.namelist())
    assert {BUILDSPEC, "setup.py", "constraints.txt", "pipelines/pipeline.py"} <= names
    assert not any(n.startswith((".venv", ".scones")) for n in names)
    # the same sources give the same prefix: an unchanged stack is a no-op update
    again = package(config, tmp_path / "again", bucket="project-bucket", with_source=False,
                    project_name="bikes", project_id="p-1234")
    assert again.parameters["LambdaCodeKeyPrefix"] == prefix
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="project-bucket")
        assert sorted(upload(result, s3)) == sorted(expected)
        listed = {o["Key"] for o in s3.list_objects_v2(Bucket="project-bucket")["Contents"]}
    assert listed == {url.removeprefix("s3://project-bucket/") for url in expected}
    no_bucket = config.replace(aws=dataclasses.replace(config.aws, bucket=None))
    with pytest.raises(PackagingError, match="no bucket"):
        package(no_bucket, tmp_path / "none", project_name="bikes", project_id="p-1234")
    assert not (tmp_path / "none").exists()  # refused before anything was written


def _operation(resource: str):
    """(botocore service, operation model) for a Task's Resource ARN."""
    import botocore.session

    integration = resource.removeprefix("arn:aws:states:::").removeprefix("aws-sdk:")
    service, _, action = integration.partition(":")
    action = action.split(".")[0]  # .sync, .waitForTaskToken
    service = {"applicationautoscaling": "application-autoscaling"}.get(service, service)
    model = botocore.session.get_session().get_service_model(service)
    return service, model.operation_model(action[0].upper() + action[1:])


def _check_against_shape(value, shape, where: str, problems: list) -> None:
    """Keys and literal types of a Task's Parameters against the API's input shape."""
    if isinstance(value, dict) and set(value) & {"Ref", "Fn::Sub", "Fn::GetAtt"}:
        value = "<resolved by CloudFormation>"   # a string once the stack resolves it
    if shape.type_name == "structure":
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object for {shape.name}")
            return
        # Step Functions spells every API's members in PascalCase (CodeBuild's projectName
        # is ProjectName in a Task)
        members = {m[0].upper() + m[1:]: s for m, s in shape.members.items()}
        given = {k.removesuffix(".$") for k in value}
        for required in shape.required_members:
            if required[0].upper() + required[1:] not in given:
                problems.append(f"{where}: missing required {required}")
        for key, member in value.items():
            name = key.removesuffix(".$")
            if name not in members:
                problems.append(f"{where}: {shape.name} has no member {name}")
            elif not key.endswith(".$"):   # a path or intrinsic is typed at run time
                _check_against_shape(member, members[name], f"{where}.{name}", problems)
    elif shape.type_name == "list":
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list")
            return
        for i, item in enumerate(value):
            _check_against_shape(item, shape.member, f"{where}[{i}]", problems)
    else:
        python = {"string": str, "integer": int, "long": int, "boolean": bool,
                  "double": (int, float), "float": (int, float)}.get(shape.type_name)
        if python and not isinstance(value, python):
            problems.append(f"{where}: {value!r} is not a {shape.type_name}")
        enum = getattr(shape, "enum", None)
        if enum and isinstance(value, str) and "<" not in value \
                and value not in enum:
            problems.append(f"{where}: {value!r} is not one of {enum}")


@pytest.mark.parametrize("conditions", [DEFAULTS, ALL_CONDITIONS_ON])
def test_deploy_tasks_call_the_apis_as_botocore_models_them(template, conditions):
    definition = resolve_conditions(template, conditions)["Resources"][
        "DeployStateMachine"]["Properties"]["Definition"]
    problems, called = [], set()
    for name, state in definition["States"].items():
        if state == {"Ref": "AWS::NoValue"} or state["Type"] != "Task":
            continue
        service, operation = _operation(state["Resource"])
        called.add(f"{service}:{operation.name}")
        parameters = dict(state["Parameters"])
        if operation.name == "Publish":   # Step Functions serializes an object Message
            parameters["Message"] = json.dumps(parameters["Message"])
        _check_against_shape(_drop_novalue(parameters), operation.input_shape, name,
                             problems)
    assert problems == []
    assert {"sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint",
            "sagemaker:CreateEndpointConfig", "sagemaker:CreateModel",
            "codebuild:StartBuild", "sns:Publish",
            "application-autoscaling:RegisterScalableTarget"} <= called
    # and the checker catches a misspelt member
    broken = copy.deepcopy(definition["States"]["ProdUpdateEndpoint"]["Parameters"])
    broken["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TerminationWaitSeconds"] = 600
    found: list = []
    _check_against_shape(broken, _operation("aws-sdk:sagemaker:updateEndpoint")[1]
                         .input_shape, "ProdUpdateEndpoint", found)
    assert any("no member TerminationWaitSeconds" in p for p in found), found


def _drop_novalue(node):
    """What CloudFormation hands Step Functions: AWS::NoValue removes the key."""
    if isinstance(node, dict):
        return {k: _drop_novalue(v) for k, v in node.items() if v != {"Ref": "AWS::NoValue"}}
    if isinstance(node, list):
        return [_drop_novalue(v) for v in node if v != {"Ref": "AWS::NoValue"}]
    return node


# --- the deploy state machine, executed by moto's ASL interpreter --------------------------
# What moto lacks is stubbed, and only that: UpdateEndpoint (a response method deciding
# whether the blue/green update completes or the alarms roll it back), CodeBuild's .sync
# integration (the staging test becomes a Pass or a Fail state) and the
# "applicationautoscaling" aws-sdk service name (botocore's is "application-autoscaling").
# Waits are made 0 s long. Everything else (DescribeModelPackage, CreateModel from the
# package, CreateEndpointConfig with capture, CreateEndpoint, DescribeEndpoint, autoscaling,
# the SNS task-token approval and SendTaskSuccess) is moto's own behaviour.
ACCOUNT, REGION = "123456789012", "us-east-1"
STACK = {"SageMakerProjectName": "bikes", "SageMakerProjectId": "p-abc123",
         "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
         "ArtifactBucket": "sagemaker-project-p-abc123", "KmsKeyArn": "",
         "StagingTestProject": "bikes-staging-test",
         "NotificationTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:bikes-deployments",
         "SageMakerExecutionRole.Arn": f"arn:aws:iam::{ACCOUNT}:role/sm"}
_NO_VALUE = object()


def _resolve(node, template, conditions):
    """CloudFormation's intrinsics, for the values in STACK and the parameters' defaults."""
    def value(name):
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in STACK:
            return STACK[name]
        return str(template["Parameters"][name]["Default"])

    if isinstance(node, dict):
        if set(node) == {"Fn::If"}:
            name, then, otherwise = node["Fn::If"]
            return _resolve(then if conditions[name] else otherwise, template, conditions)
        if set(node) == {"Ref"}:
            return value(node["Ref"])
        if set(node) == {"Fn::GetAtt"}:
            return STACK[".".join(node["Fn::GetAtt"])]
        if set(node) == {"Fn::Sub"}:
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(value(m.group(1))), node["Fn::Sub"])
        resolved = {k: _resolve(v, template, conditions) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}
    if isinstance(node, list):
        return [v for v in (_resolve(v, template, conditions) for v in node)
                if v is not _NO_VALUE]
    return node


def _timestamps_as_text(eval_service_task):
    """moto's aws-sdk tasks put boto3's datetime objects into the state, which moto then
    cannot serialise (DescribeExecution fails); Step Functions hands them on as text. Only a
    whole SDK answer kept in the state (the threshold's DescribeModelPackage) carries one."""
    import datetime

    def as_text(node):
        if isinstance(node, datetime.datetime):
            return node.isoformat()
        if isinstance(node, dict):
            return {k: as_text(v) for k, v in node.items()}
        if isinstance(node, list):
            return [as_text(v) for v in node]
        return node

    def patched(self, env, *args, **kwargs):
        eval_service_task(self, env, *args, **kwargs)
        env.stack.append(as_text(env.stack.pop()))
    return patched


class _Deployer:
    """The deploy state machine in moto, with a topic whose messages land in a queue."""

    def __init__(self, template, staging_test_passes: bool = True, workflow: bool = False):
        """workflow: the stack with the inference workflow's Lambdas (DeployWorkflow), whose
        threshold prod sets; the functions are created in moto (never invoked)."""
        from moto.sagemaker.responses import SageMakerResponse

        definition = _resolve(
            template["Resources"]["DeployStateMachine"]["Properties"]["Definition"],
            template, {"HasKmsKey": False, "StagingCanary": False, "ProdCanary": True,
                       "StagingShiftsAllAtOnce": False, "ProdShiftsAllAtOnce": False,
                       "DeployWorkflow": workflow})
        self.threshold_functions = [
            s["Parameters"]["FunctionName"] for s in definition["States"].values()
            if s.get("Resource", "").endswith(":lambda:updateFunctionConfiguration")]
        for state in definition["States"].values():
            if state["Type"] == "Wait":
                state["Seconds"] = 0
            if "aws-sdk:applicationautoscaling:" in state.get("Resource", ""):
                state["Resource"] = state["Resource"].replace("applicationautoscaling",
                                                              "application-autoscaling")
        definition["States"]["StagingTest"] = (
            {"Type": "Pass", "Next": "ManualApproval"} if staging_test_passes else
            {"Type": "Fail", "Error": "StagingTestFailed", "Cause": "accuracy below limit"})
        self.definition = definition
        self.rollback_next_update = False
        self.updates: list[dict] = []
        deployer = self

        def update_endpoint(response):  # what moto lacks; SageMaker's semantics, simplified
            from moto.sagemaker.models import sagemaker_backends

            backend = sagemaker_backends[ACCOUNT][REGION]
            endpoint = backend.endpoints[response._get_param("EndpointName")]
            deployer.updates.append({"EndpointName": endpoint.endpoint_name,
                                     "EndpointConfigName":
                                         response._get_param("EndpointConfigName"),
                                     "DeploymentConfig":
                                         response._get_param("DeploymentConfig")})
            if deployer.rollback_next_update:   # an alarm fired during the canary
                deployer.rollback_next_update = False
                endpoint.failure_reason = "Rolled back: alarm bikes-prod-invocation-5xx"
            else:
                endpoint.endpoint_config_name = response._get_param("EndpointConfigName")
            from moto.core.responses import ActionResult

            return ActionResult({"EndpointArn": endpoint.arn})

        self._patch = mock.patch.object(SageMakerResponse, "update_endpoint",
                                        update_endpoint, create=True)
        self._timestamps_patch = mock.patch.object(
            StateTaskServiceAwsSdk, "_eval_service_task", _timestamps_as_text(
                StateTaskServiceAwsSdk._eval_service_task))

    def __enter__(self):
        self._mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
        self._mock.start()
        self._patch.start()
        self._timestamps_patch.start()
        self.sagemaker = boto3.client("sagemaker", region_name=REGION)
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        sns = boto3.client("sns", region_name=REGION)
        topic = sns.create_topic(Name="bikes-deployments")["TopicArn"]
        self.queue = self.sqs.create_queue(QueueName="approvals")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(
            QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn,
                      Attributes={"RawMessageDelivery": "true"})
        self.definition["States"]["ManualApproval"]["Parameters"]["TopicArn"] = topic
        self.sagemaker.create_model_package_group(ModelPackageGroupName="bikes-p-abc123")
        if self.threshold_functions:
            role = boto3.client("iam", region_name=REGION).create_role(
                RoleName="lambdas", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
            code = io.BytesIO()
            with zipfile.ZipFile(code, "w") as archive:
                archive.writestr("handler.py", "def lambda_handler(event, context):\n    pass\n")
            for name in self.threshold_functions:
                boto3.client("lambda", region_name=REGION).create_function(
                    FunctionName=name, Runtime="python3.11", Role=role,
                    Handler="handler.lambda_handler", Code={"ZipFile": code.getvalue()},
                    Environment={"Variables": {"CONFIDENCE_THRESHOLD": "0.8"}})
        self.machine = self.sfn.create_state_machine(
            name="bikes-deploy", definition=json.dumps(self.definition),
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/deploy")["stateMachineArn"]
        return self

    def __exit__(self, *exc):
        self._timestamps_patch.stop()
        self._patch.stop()
        self._mock.stop()

    def approved_version(self, **extra) -> str:
        return self.sagemaker.create_model_package(
            ModelPackageGroupName="bikes-p-abc123", ModelApprovalStatus="Approved", **extra,
            InferenceSpecification={
                "Containers": [{"Image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/torch:2",
                                "ModelDataUrl": "s3://sagemaker-project-p-abc123/m.tar.gz"}],
                "SupportedContentTypes": ["image/png"],
                "SupportedResponseMIMETypes": ["application/json"]})["ModelPackageArn"]

    def start(self, package_arn: str) -> str:
        event = {"source": "aws.sagemaker",
                 "detail-type": "SageMaker Model Package State Change",
                 "detail": {"ModelPackageArn": package_arn,
                            "ModelPackageGroupName": "bikes-p-abc123",
                            "ModelApprovalStatus": "Approved"}}
        return self.sfn.start_execution(stateMachineArn=self.machine, name=uuid.uuid4().hex,
                                        input=json.dumps(event))["executionArn"]

    def settle(self, execution: str, timeout: float = 60, to_end: bool = False) -> dict:
        """Wait until the execution ends or (unless to_end) waits for the approval; its
        description and the states it entered."""
        deadline = time.monotonic() + timeout
        while True:
            described = self.sfn.describe_execution(executionArn=execution)
            history = self.sfn.get_execution_history(executionArn=execution)["events"]
            entered = [e["stateEnteredEventDetails"]["name"] for e in history
                       if "stateEnteredEventDetails" in e]
            if described["status"] != "RUNNING" or not to_end and entered[-1:] == [
                    "ManualApproval"] and any(e["type"] == "TaskSubmitted" for e in history[-3:]):
                return {**described, "entered": entered}
            assert time.monotonic() < deadline, entered
            time.sleep(0.05)

    def approval_token(self) -> dict:
        return self.approval_tokens(1)[0]

    def approval_tokens(self, count: int) -> list[dict]:
        messages = self.sqs.receive_message(QueueUrl=self.queue, WaitTimeSeconds=0,
                                            MaxNumberOfMessages=10).get("Messages", [])
        assert len(messages) == count, messages
        return [json.loads(m["Body"]) for m in messages]

    def serving(self, stage: str) -> str:
        return self.sagemaker.describe_endpoint(EndpointName=f"bikes-p-abc123-{stage}")[
            "EndpointConfigName"]


@pytest.mark.slow
def test_deploy_state_machine_runs_staging_approval_prod_in_moto(template):
    with _Deployer(template) as aws:
        v1 = aws.approved_version()
        first = aws.settle(aws.start(v1))
        assert first["status"] == "RUNNING" and first["entered"][-1] == "ManualApproval"
        assert "StagingCreateEndpoint" in first["entered"]   # the first deployment creates
        assert aws.serving("staging") == "bikes-p-abc123-staging-v1"
        staging = aws.sagemaker.describe_endpoint_config(EndpointConfigName="bikes-p-abc123-staging-v1")
        assert staging["DataCaptureConfig"]["DestinationS3Uri"] == \
            "s3://sagemaker-project-p-abc123/datacapture/staging"
        model = aws.sagemaker.describe_model(ModelName="bikes-p-abc123-staging-v1")
        assert model["PrimaryContainer"]["ModelPackageName"] == v1
        scaling = boto3.client("application-autoscaling", region_name=REGION)
        targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")[
            "ScalableTargets"]
        assert [t["ResourceId"] for t in targets] == ["endpoint/bikes-p-abc123-staging/variant/AllTraffic"]

        # a second event for v1 while the first waits for approval (a duplicate, or an
        # approval made again): staging is not touched again, the version goes on to its
        # test and asks for promotion again
        duplicate = aws.settle(aws.start(v1))
        assert duplicate["status"] == "RUNNING"
        assert "StagingAlreadyServing" in duplicate["entered"]
        assert not {"StagingCreateEndpoint", "StagingUpdateEndpoint"} & set(duplicate["entered"])

        messages = aws.approval_tokens(2)
        assert {m["modelPackageArn"] for m in messages} == {v1}
        with pytest.raises(aws.sfn.exceptions.ClientError, match="NotInProd|Could not find"):
            aws.serving("prod")
        for message in messages:  # whichever is approved first deploys; the other finds it done
            aws.sfn.send_task_success(taskToken=message["taskToken"], output="{}")
            time.sleep(0.5)
        for execution in (first["executionArn"], duplicate["executionArn"]):
            done = aws.settle(execution, to_end=True)
            assert done["status"] == "SUCCEEDED", done
            assert done["entered"][-1] == "DeployedToProd"
        assert aws.serving("prod") == "bikes-p-abc123-prod-v1"
        assert [u["EndpointName"] for u in aws.updates] == []   # created once, never updated

        # v2: staging is updated blue/green (linear); prod's canary trips an alarm
        v2 = aws.approved_version()
        second = aws.settle(aws.start(v2))
        assert "StagingUpdateEndpoint" in second["entered"]
        assert aws.serving("staging") == "bikes-p-abc123-staging-v2"
        staging_update = aws.updates[-1]
        assert staging_update["DeploymentConfig"]["BlueGreenUpdatePolicy"][
            "TrafficRoutingConfiguration"]["Type"] == "LINEAR"
        aws.rollback_next_update = True
        aws.sfn.send_task_success(taskToken=aws.approval_token()["taskToken"], output="{}")
        rolled_back = aws.settle(second["executionArn"], to_end=True)
        assert rolled_back["status"] == "FAILED" and rolled_back["error"] == \
            "DeploymentRolledBack"
        prod_update = aws.updates[-1]
        assert prod_update["EndpointName"] == "bikes-p-abc123-prod"
        policy = prod_update["DeploymentConfig"]["BlueGreenUpdatePolicy"]
        assert policy["TrafficRoutingConfiguration"] == {
            "Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
            "WaitIntervalInSeconds": 600}
        assert prod_update["DeploymentConfig"]["AutoRollbackConfiguration"] == {"Alarms": [
            {"AlarmName": "bikes-prod-invocation-5xx"},
            {"AlarmName": "bikes-prod-model-latency"}]}
        assert aws.serving("prod") == "bikes-p-abc123-prod-v1"   # still the version that worked


@pytest.mark.slow
def test_deploy_state_machine_stops_at_a_failed_staging_test_or_a_refusal(template):
    with _Deployer(template, staging_test_passes=False) as aws:
        failed = aws.settle(aws.start(aws.approved_version()), to_end=True)
        assert failed["status"] == "FAILED" and failed["error"] == "StagingTestFailed"
        with pytest.raises(aws.sfn.exceptions.ClientError):
            aws.serving("prod")
    with _Deployer(template) as aws:
        waiting = aws.settle(aws.start(aws.approved_version()))
        aws.sfn.send_task_failure(taskToken=aws.approval_token()["taskToken"],
                                  error="Rejected", cause="worse on night photos")
        refused = aws.settle(waiting["executionArn"], to_end=True)
        assert refused["status"] == "FAILED" and refused["error"] == "PromotionRefused"
        with pytest.raises(aws.sfn.exceptions.ClientError):
            aws.serving("prod")
        # approved again: the version staging still serves is tested and offered again
        again = aws.settle(aws.start(aws.sagemaker.list_model_packages(
            ModelPackageGroupName="bikes-p-abc123")["ModelPackageSummaryList"][0][
                "ModelPackageArn"]))
        assert again["status"] == "RUNNING" and "StagingAlreadyServing" in again["entered"]
        aws.sfn.send_task_success(taskToken=aws.approval_token()["taskToken"], output="{}")
        done = aws.settle(again["executionArn"], to_end=True)
        assert done["status"] == "SUCCEEDED" and aws.serving("prod") == "bikes-p-abc123-prod-v1"


def test_infra_package_is_a_command(run_scones, tmp_path):
    out = tmp_path / "bundle"
    result = run_scones("infra", "package", "--out", str(out), "--bucket", "project-bucket",
                        "--project-name", "bikes", "--project-id", "p-1234", "--no-source")
    assert result.returncode == 0, result.stderr
    parameters = {p["ParameterKey"]: p["ParameterValue"]
                  for p in json.loads((out / "parameters.json").read_text())}
    assert parameters["SageMakerProjectName"] == "bikes"
    template_url = json.loads((out / "package.json").read_text())["template_url"]
    assert template_url in result.stdout
    missing = run_scones("infra", "package", "--out", str(tmp_path / "x"), "--bucket", "b",
                         "--project-name", "Bikes!", "--project-id", "p-1")
    assert missing.returncode != 0
    assert "SageMakerProjectName" in missing.stderr and "Traceback" not in missing.stderr
