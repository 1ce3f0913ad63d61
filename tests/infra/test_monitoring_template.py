"""The monitoring part of the SageMaker Project template: a schedule that starts the
monitoring job as a processing job (a request botocore accepts, a command our CLI parses),
an alarm on the job's Violations metric, and the alarm's ALARM state starting the pipeline.
(cfn-lint and checkov run on the whole template in test_project_template.py.)"""
from __future__ import annotations

import json
import re
import shlex
import uuid

import botocore.session
import pytest
from botocore.validate import ParamValidator

from scones.config import load_config
from infra.project_template import project_template

MONITORING = ("MonitoringScheduleRole", "MonitoringJobPolicy", "MonitoringJobSchedule",
              "DriftAlarm", "DriftAlarmRetrainRule")


@pytest.fixture(scope="module")
def config():
    return load_config("local")


@pytest.fixture(scope="module")
def resources(config):
    return project_template(config)["Resources"]


def _substitute(text: str) -> str:
    """Fn::Sub as CloudFormation would, with stand-in values; then the schedule's context
    attribute as EventBridge Scheduler would."""
    values = {"ArtifactBucket": "scones-artifacts", "SageMakerProjectName": "scones",
              "SageMakerProjectId": "p-abc123", "AWS::Region": "eu-west-1",
              "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
              "SageMakerExecutionRole.Arn": "arn:aws:iam::123456789012:role/sm",
              "MonitoringWindow": "1h", "TrainingDataPrefix": "data/train/",
              "MonitoringAlarmViolations": "1", "AWS::URLSuffix": "amazonaws.com",
              "TrainingImageAccount": "763104351884"}
    text = re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], text)
    return text.replace("<aws.scheduler.execution-id>", str(uuid.uuid4()))


def test_monitoring_exists_only_with_a_schedule(resources):
    for name in MONITORING:
        assert resources[name]["Condition"] == "HasMonitoringSchedule", name


def test_schedule_starts_a_processing_job_botocore_accepts(resources):
    schedule = resources["MonitoringJobSchedule"]["Properties"]
    assert schedule["ScheduleExpression"] == {"Ref": "MonitoringSchedule"}
    target = schedule["Target"]
    assert target["Arn"] == "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob"
    request = json.loads(_substitute(target["Input"]["Fn::Sub"][0]))
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateProcessingJob").input_shape
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()
    name = request["ProcessingJobName"]
    assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name), name
    # a misspelt member would be caught
    broken = {**request, "ProcessingResource": request["ProcessingResources"]}
    assert ParamValidator().validate(broken, shape).has_errors()


def test_the_jobs_command_is_monitor_run_as_our_cli_parses_it(resources):
    from app.cli.main import build_parser

    request = json.loads(_substitute(
        resources["MonitoringJobSchedule"]["Properties"]["Target"]["Input"]["Fn::Sub"][0]))
    command = request["AppSpecification"]["ContainerEntrypoint"][2]
    cli = command.split("python -m app.cli.main ", 1)[1]
    args = build_parser().parse_args(shlex.split(cli))
    assert (args.env, args.since, args.out) == ("aws", "1h", "/opt/ml/processing/report")
    assert args.source == "s3://scones-artifacts/datacapture/prod/scones-p-abc123-prod/"
    settings = dict(item.split("=", 1) for item in args.overrides)
    assert settings["workflow.endpoint_name"] == "scones-p-abc123-prod"
    assert settings["aws.bucket"] == "scones-artifacts"
    # the settings are ones our config knows, and they load
    from app.cli.main import parse_overrides

    config = load_config("aws", overrides=parse_overrides(args.overrides))
    assert config.pipeline.model_package_group == "scones-p-abc123"
    # the report comes back to the bucket, one folder per scheduled run
    (output,) = request["ProcessingOutputConfig"]["Outputs"]
    assert output["S3Output"]["LocalPath"] == args.out
    assert output["S3Output"]["S3Uri"].startswith("s3://scones-artifacts/monitoring/reports/")


def test_violations_alarm_starts_the_pipeline_once_per_episode(resources, config):
    alarm = resources["DriftAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == (config.monitoring.metrics_namespace,
                                                         "Violations")
    assert alarm["Dimensions"] == [{"Name": "Endpoint", "Value": {
        "Fn::Sub": "${SageMakerProjectName}-${SageMakerProjectId}-prod"}}]
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"
    rule = resources["DriftAlarmRetrainRule"]["Properties"]
    assert rule["EventPattern"]["resources"] == [{"Fn::GetAtt": ["DriftAlarm", "Arn"]}]
    assert rule["EventPattern"]["detail"] == {"state": {"value": ["ALARM"]}}
    (target,) = rule["Targets"]
    # the model build: it snapshots the labelled data and trains on that snapshot
    assert target["Arn"] == {"Fn::Sub": "arn:${AWS::Partition}:codepipeline:${AWS::Region}:"
                                        "${AWS::AccountId}:${ModelBuildPipeline}"}
    assert target["RoleArn"] == {"Fn::GetAtt": ["RetrainingRole", "Arn"]}
    # the metric the alarm watches is the one the monitoring job emits
    from workflow.monitoring.check import VIOLATIONS_METRIC

    assert alarm["MetricName"] == VIOLATIONS_METRIC


def test_the_schedule_role_may_start_only_monitoring_jobs(resources):
    statements = resources["MonitoringScheduleRole"]["Properties"]["Policies"][0][
        "PolicyDocument"]["Statement"]
    by_sid = {s["Sid"]: s for s in statements}
    assert by_sid["StartMonitoringJob"]["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:"
                   "processing-job/monitor-*"}
    assert by_sid["PassExecutionRole"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
