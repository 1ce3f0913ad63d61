"""The SageMaker Project template: what a team adopts from Studio (as an organization
template through Service Catalog) or provisions from S3 with CloudFormation.

    model build   source (CodeConnections to GitHub/GitLab/Bitbucket, or an S3 object)
                  -> CodePipeline -> CodeBuild running codebuild-buildspec.yml, whose
                  `run-pipeline` upserts the SageMaker pipeline and starts it. The pipeline
                  is therefore not a stack resource: the build creates/updates it (it is
                  what Studio's Pipelines view shows), named <project>-<project id> as the
                  AWS templates name it.
    model deploy  "model package Approved" (EventBridge, with retries and a dead-letter
                  queue) -> the deploy state machine (infra/deploy_state_machine.py): staging,
                  test, manual approval, prod with blue/green canary/linear shifting and
                  auto-rollback on CloudWatch alarms.
    retraining    an EventBridge Scheduler schedule and a "new labelled data" S3 rule, both
                  starting the model build (which snapshots the labelled data under
                  TrainingDataPrefix and trains on that snapshot), both off by default.
    monitoring    an EventBridge Scheduler schedule (MonitoringSchedule; off when empty)
                  starting the monitoring job (`scones monitor run`) as a SageMaker
                  processing job on the prod endpoint's capture; its Violations metric has a
                  CloudWatch alarm, and the alarm's move into ALARM starts the model
                  build (EventBridge). The alarm fires once per episode: that is the cool-down.
    inference     the inference workflow (three Lambdas, its state machine, the new-image
                  rule) and the bulk workflow (three Lambdas, a Distributed Map), from the
                  Lambda table and the ASL the local engine runs; created once their zips
                  are uploaded (infra.package) and LambdaCodeBucket is set. The deploy state
                  machine sets each promoted version's own threshold on them.

This template is the one source of the project's AWS resources: `scones infra deploy` and
`scones workflow deploy` create or update its stack (infra/stack.py); there is no other
path to AWS.
    plus          the artifact bucket, the SageMaker execution role, least-privilege roles
                  (no "*" action), the model package group, alarms and notifications.

SageMaker writes names lower case into ARNs and CloudFormation cannot lower-case a name, so
the SageMaker resources are named <project name>-<project id>-... and the roles' policies
match them on the (lower-case) project id: SageMakerProjectName may be anything Studio's
CreateProject accepts, Scones-Team1 included (infra.deploy_state_machine.sagemaker_name).

`project_template(config)` returns the template; the committed rendering is
infra/sagemaker-project.json (tests keep it identical to the generator's output).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import shlex
from pathlib import Path

from scones.backend import LAMBDA_RUNTIME
from scones.config import Config
from scones.sdk import sagemaker_sdk
from infra import deploy_state_machine
from infra.deploy_state_machine import (STAGES, VARIANT_NAME, alarm_names, endpoint_name,
                                        sagemaker_arn_name, sagemaker_name)
from workflow.bulk import RESULTS_PREFIX, bulk_definition_json
from workflow.definition import lambda_functions, workflow_definition_json

TEMPLATE_PATH = Path(__file__).with_name("sagemaker-project.json")
BUILDSPEC = "codebuild-buildspec.yml"
LOG_RETENTION_DAYS = 30
CODEBUILD_IMAGE = "aws/codebuild/amazonlinux-x86_64-standard:5.0"  # has python 3.11
ARN = "arn:${AWS::Partition}"
REGION_ACCOUNT = "${AWS::Region}:${AWS::AccountId}"
PROJECT = "${SageMakerProjectName}"
PIPELINE_NAME = sagemaker_name()  # <project>-<project id>, as the templates' buildspec
PIPELINE_ARN = f"{ARN}:sagemaker:{REGION_ACCOUNT}:pipeline/{PIPELINE_NAME}"  # targets
# in policies: the pipeline's ARN as SageMaker writes it, lower case (sagemaker_arn_name)
PIPELINE_ARN_PATTERN = f"{ARN}:sagemaker:{REGION_ACCOUNT}:pipeline/{sagemaker_arn_name()}"
MODEL_PACKAGES = f"model-package/{sagemaker_arn_name()}/*"
# The model build's CodePipeline: what retraining starts (the build snapshots the labelled
# data under TrainingDataPrefix and trains on that snapshot)
MODEL_BUILD_ARN = f"{ARN}:codepipeline:{REGION_ACCOUNT}:${{ModelBuildPipeline}}"
# Where the model build publishes the code it built from, for the staging test. Not
# SourceObjectKey: writing there would start the model build again, forever.
TEST_SOURCE_KEY = "deploy/model-build-source.zip"
# What the staging test's CodeBuild installs besides the project itself (--no-deps): the
# project's dependencies but torch, which nothing `scones` imports needs (the model is
# served by SageMaker) and which PyPI serves as gigabytes of CUDA wheels.
# tests/infra/test_deploy_flow.py proves from the import graph that they cover every
# package `scones` can import.
STAGING_TEST_PACKAGES = ("sagemaker", "stepfunctions", "boto3", "numpy", "pillow", "pyyaml",
                         "matplotlib", "rich", "waitress", "sagemaker-inference",
                         "moto[s3,stepfunctions,sagemaker,iam,events]", "flask", "plotly")
# Placeholder the workflow ASL is generated with, then replaced by the project's name.
_FUNCTION_PREFIX_SENTINEL = "scones-function-prefix-sentinel"


def _sub(text: str) -> dict:
    return {"Fn::Sub": text}


def _ref(name: str) -> dict:
    return {"Ref": name}


def _arn(name: str) -> dict:
    return {"Fn::GetAtt": [name, "Arn"]}


def _if(condition: str, then, otherwise=None) -> dict:
    return {"Fn::If": [condition, then,
                       _ref("AWS::NoValue") if otherwise is None else otherwise]}


def _project_tags() -> list[dict]:
    return [{"Key": "sagemaker:project-name", "Value": _ref("SageMakerProjectName")},
            {"Key": "sagemaker:project-id", "Value": _ref("SageMakerProjectId")}]


def _checkov_skips(*skips: tuple[str, str]) -> dict:
    """Metadata that tells checkov why a check does not apply here (id, justification)."""
    return {"checkov": {"skip": [{"id": i, "comment": c} for i, c in skips]}}


def _statement(sid: str, actions: list[str], resources, condition: dict | None = None) -> dict:
    statement = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions),
                 "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def _kms_statement(actions: list[str]) -> dict:
    """Only when the bucket is SSE-KMS: then every reader/writer needs the key."""
    return _if("HasKmsKey", _statement("UseProjectKey", actions, _ref("KmsKeyArn")))


def _role(services: list[str], description: str, statements: list, *,
          condition: str | None = None) -> dict:
    trust = {"Effect": "Allow", "Principal": {"Service": sorted(services)},
             "Action": "sts:AssumeRole"}
    if services != ["lambda.amazonaws.com"] and services != ["sagemaker.amazonaws.com"]:
        # confused-deputy guard, as the services document for their roles
        trust["Condition"] = {"StringEquals": {"aws:SourceAccount": _ref("AWS::AccountId")}}
    role = {"Type": "AWS::IAM::Role",
            "Properties": {"Description": description,
                           "AssumeRolePolicyDocument": {"Version": "2012-10-17",
                                                        "Statement": [trust]},
                           "Policies": [{"PolicyName": "least-privilege",
                                         "PolicyDocument": {"Version": "2012-10-17",
                                                            "Statement": statements}}],
                           "Tags": _project_tags()}}
    if condition:
        role["Condition"] = condition
    return role


def _log_group(name, condition: str | None = None) -> dict:
    group = {"Type": "AWS::Logs::LogGroup",
             "DeletionPolicy": "Delete", "UpdateReplacePolicy": "Delete",
             "Properties": {"LogGroupName": name, "RetentionInDays": LOG_RETENTION_DAYS,
                            "KmsKeyId": _if("HasKmsKey", _ref("KmsKeyArn")),
                            "Tags": _project_tags()},
             "Metadata": _checkov_skips(
                 ("CKV_AWS_158", "encrypted with KmsKeyArn when one is given (Fn::If); "
                                 "otherwise CloudWatch Logs' own encryption"))}
    if condition:
        group["Condition"] = condition
    return group


def _bucket_arn() -> dict:
    return _arn("ArtifactBucket")


def _bucket_objects(prefix: str = "") -> dict:
    return _sub(f"${{ArtifactBucket.Arn}}/{prefix}*")


def _sagemaker_arn(resource: str) -> dict:
    return _sub(f"{ARN}:sagemaker:{REGION_ACCOUNT}:{resource}")


# ----------------------------------------------------------------------------- parameters

def _parameters(config: Config) -> dict:
    def number(default, description, minimum=None, maximum=None):
        p = {"Type": "Number", "Default": default, "Description": description}
        if minimum is not None:
            p["MinValue"] = minimum
        if maximum is not None:
            p["MaxValue"] = maximum
        return p

    def text(default, description, **extra):
        return {"Type": "String", "Default": default, "Description": description, **extra}

    switch = {"AllowedValues": ["true", "false"]}
    params = {
        "SageMakerProjectName": {
            "Type": "String", "MinLength": 1, "MaxLength": 32,
            # CreateProject's own pattern
            "AllowedPattern": "^[a-zA-Z](-*[a-zA-Z0-9]){0,31}$",
            "ConstraintDescription": "letters, digits and hyphens, starting with a letter "
                                     "(as SageMaker's CreateProject accepts)",
            "Description": "Name of the project"},
        "SageMakerProjectId": {
            "Type": "String", "MinLength": 1, "MaxLength": 16,
            # the roles' policies match SageMaker's lower-case ARNs on it (sagemaker_name)
            "AllowedPattern": "^[a-z0-9](-*[a-z0-9])*$",
            "ConstraintDescription": "lower-case letters, digits and hyphens, as SageMaker "
                                     "generates project ids (p-...)",
            "Description": "Service generated Id of the project"},
        "CodeConnectionArn": text(
            "", "CodeConnections (or CodeStar connection) ARN to GitHub, GitLab or "
                "Bitbucket; empty: the source is SourceObjectKey in the artifact bucket",
            AllowedPattern=r"^$|^arn:aws[a-z-]*:(codeconnections|codestar-connections):"
                           r"[a-z0-9-]+:\d{12}:connection/[A-Za-z0-9-]+$"),
        "RepositoryFullName": text("", "owner/repository of this project's code (with "
                                       "CodeConnectionArn)"),
        "RepositoryBranch": text("main", "Branch whose pushes rebuild the model"),
        "SourceObjectKey": text("source/scones-mlops.zip",
                                "Without a connection: zip of the project's code in the "
                                "artifact bucket; each upload starts the model build"),
        "KmsKeyArn": text("", "KMS key for the bucket, logs, builds and data capture; "
                              "empty: S3-managed keys",
                          AllowedPattern=r"^$|^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/.+$"),
        "TrainingDataPrefix": text("data/train/", "Key prefix of the labelled images in the "
                                                  "artifact bucket, <class>/<image>; each "
                                                  "model build trains on a snapshot of them"),
        "RetrainOnSchedule": text("false", "Start the model build on "
                                           "RetrainingScheduleExpression",
                                  **switch),
        "RetrainingScheduleExpression": text("rate(7 days)", "EventBridge Scheduler expression"),
        "RetrainOnNewData": text("false", "Start the model build when NewDataMarker is "
                                          "written under TrainingDataPrefix", **switch),
        "NewDataMarker": text(
            "_READY", "Name of the object that marks a complete batch of new labelled "
                      "images (one pipeline run per batch, not per image); empty: every "
                      "new object under TrainingDataPrefix starts a run"),
        "MonitoringSchedule": text(
            "", "EventBridge Scheduler expression of the monitoring job, e.g. rate(1 hour) "
                "(it checks the capture of the last MonitoringWindow); empty: no monitoring "
                "job and no drift alarm"),
        "MonitoringWindow": text(
            "1h", "Capture the monitoring job reads back from each run (monitor run --since): "
                  "the schedule's period", AllowedPattern=r"^\d+[smhdw]$"),
        "MonitoringAlarmViolations": number(
            config.monitoring.alarm_violations, "Violations in one monitoring run that raise "
                                                "the drift alarm and start retraining", 1),
        "LambdaCodeBucket": text("", "Bucket holding the workflow Lambdas' zips "
                                     "(infra.package writes the parameter file); "
                                     "empty: the inference workflow is not created yet"),
        "LambdaCodeKeyPrefix": text("lambdas/", "Key prefix of the zips, <prefix><function>"
                                                ".zip; a new prefix rolls out new code"),
        "IncomingPrefix": text("incoming/", "New objects under this prefix of the artifact "
                                            "bucket start the inference workflow"),
        "StagingTestCommand": text(
            "scones endpoint test --stage staging --env aws "
            "--set deployment.staging.endpoint_name=$ENDPOINT_NAME "
            "--set aws.region=$AWS_REGION --set aws.bucket=$ARTIFACT_BUCKET "
            "--set pipeline.model_package_group=$MODEL_PACKAGE_GROUP "
            "--set workflow.state_machine_name=$STATE_MACHINE_NAME "
            "--set workflow.endpoint_name=$PROD_ENDPOINT_NAME",
            "Command of the staging test stage (run in the project's code; must exit "
            "non-zero when the staging endpoint fails its checks)"),
        "NotificationEmail": text("", "Who is asked to promote to prod and told of failed "
                                      "deployments; empty: subscribe to the topic yourself"),
        "ApprovalTimeoutSeconds": number(604800, "How long a version waits for promotion",
                                         60, 31536000),
        "TrafficStepPercent": number(10, "Canary size, or linear step, in % of capacity "
                                         "(SageMaker: canary at most 50 %, linear steps "
                                         "10-50 %); a stage of 1 instance shifts all at "
                                         "once, then bakes for TrafficWaitSeconds", 10, 50),
        "TrafficWaitSeconds": number(600, "Baking time between traffic shifts", 0, 3600),
        "BakeSeconds": number(600, "Wait before the old fleet is terminated", 0, 3600),
        "LatencyAlarmMicroseconds": number(500000, "ModelLatency (average, microseconds) "
                                                   "that rolls a deployment back", 1),
        "InvocationsPerInstanceTarget": number(70, "Autoscaling target: invocations per "
                                                   "instance per minute", 1),
    }
    instance_default = config.pipeline.inference_instance_type
    for stage in STAGES:
        cap = stage.capitalize()
        params.update({
            f"{cap}InstanceType": text(instance_default, f"{stage} endpoint instance type",
                                       AllowedPattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$"),
            f"{cap}InstanceCount": number(1, f"{stage} initial instance count", 1, 100),
            f"{cap}CaptureSamplingPercentage": number(
                config.monitoring.capture_sampling_percentage,
                f"{stage} data capture sampling (%)", 0, 100),
            f"{cap}MinCapacity": number(1, f"{stage} autoscaling minimum", 1, 100),
            f"{cap}MaxCapacity": number(1 if stage == "staging" else 4,
                                        f"{stage} autoscaling maximum", 1, 100),
            f"{cap}TrafficRouting": text("LINEAR" if stage == "staging" else "CANARY",
                                         f"{stage} blue/green traffic shifting",
                                         AllowedValues=["CANARY", "LINEAR"]),
        })
    return params


def _conditions() -> dict:
    def not_empty(name):
        return {"Fn::Not": [{"Fn::Equals": [_ref(name), ""]}]}

    conditions = {
        "HasKmsKey": not_empty("KmsKeyArn"),
        "UseCodeConnection": not_empty("CodeConnectionArn"),
        "UseS3Source": {"Fn::Equals": [_ref("CodeConnectionArn"), ""]},
        "RetrainOnScheduleEnabled": {"Fn::Equals": [_ref("RetrainOnSchedule"), "true"]},
        "RetrainOnNewDataEnabled": {"Fn::Equals": [_ref("RetrainOnNewData"), "true"]},
        "HasNewDataMarker": not_empty("NewDataMarker"),
        "HasNotificationEmail": not_empty("NotificationEmail"),
        "HasMonitoringSchedule": not_empty("MonitoringSchedule"),
        "DeployWorkflow": not_empty("LambdaCodeBucket"),
    }
    for stage in STAGES:
        cap = stage.capitalize()
        conditions[f"{cap}Canary"] = {"Fn::Equals": [_ref(f"{cap}TrafficRouting"), "CANARY"]}
        # one instance: no canary or linear step SageMaker accepts (deployment_config)
        conditions[f"{cap}ShiftsAllAtOnce"] = {"Fn::Equals": [_ref(f"{cap}InstanceCount"), "1"]}
    return conditions


# ----------------------------------------------------------------------------- resources

def _storage(resources: dict) -> None:
    resources["ArtifactBucket"] = {
        "Type": "AWS::S3::Bucket",
        # models, data capture and training data outlive a deleted project on purpose
        "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
        "Metadata": _checkov_skips(
            ("CKV_AWS_18", "access logging needs a separate log bucket the organisation "
                           "owns; CloudTrail data events are the audit trail here"),
            ("CKV_AWS_145", "SSE-KMS with KmsKeyArn when one is given (Fn::If); SSE-S3 "
                            "otherwise so a project works without a key")),
        "Properties": {
            "BucketName": _sub("sagemaker-project-${SageMakerProjectId}"),
            "BucketEncryption": {"ServerSideEncryptionConfiguration": [{
                "ServerSideEncryptionByDefault": _if(
                    "HasKmsKey", {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": _ref("KmsKeyArn")},
                    {"SSEAlgorithm": "AES256"}),
                "BucketKeyEnabled": True}]},
            "VersioningConfiguration": {"Status": "Enabled"},  # the S3 source action needs it
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True, "BlockPublicPolicy": True,
                "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
            "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
            # S3 -> EventBridge: the S3 source trigger, new-data and new-image rules
            "NotificationConfiguration": {"EventBridgeConfiguration": {
                "EventBridgeEnabled": True}},
            "LifecycleConfiguration": {"Rules": [{
                "Id": "expire-old-versions", "Status": "Enabled",
                "NoncurrentVersionExpiration": {"NoncurrentDays": 90},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]},
            "Tags": _project_tags()}}
    resources["ArtifactBucketPolicy"] = {
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {"Bucket": _ref("ArtifactBucket"), "PolicyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*",
                           "Action": "s3:*",  # a Deny: every action is refused without TLS
                           "Resource": [_bucket_arn(), _bucket_objects()],
                           "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}}}
    resources["ModelPackageGroup"] = {
        "Type": "AWS::SageMaker::ModelPackageGroup",
        "Properties": {"ModelPackageGroupName": _sub(PIPELINE_NAME),
                       "ModelPackageGroupDescription": _sub(
                           "Model versions of SageMaker project ${SageMakerProjectName}"),
                       "Tags": _project_tags()}}


FRAMEWORK = "pytorch"
IMAGE_MAPPING = "FrameworkImageAccounts"


def framework_image_accounts(config: Config) -> dict[str, dict[str, str]]:
    """{region: {"Training": account, "Inference": account}} of the framework's images for
    pipeline.framework_version, from the SageMaker SDK's own image_uris data: the Deep
    Learning Containers account differs by region (763104351884 is only most of them)."""
    frameworks = sagemaker_sdk().image_uris.config_for_framework(FRAMEWORK)
    accounts: dict[str, dict[str, str]] = {}
    for scope in ("training", "inference"):
        versions = frameworks[scope]["versions"]
        version = frameworks[scope].get("version_aliases", {}).get(
            config.pipeline.framework_version, config.pipeline.framework_version)
        for region, account in versions[version]["registries"].items():
            accounts.setdefault(region, {})[scope.capitalize()] = account
    return {region: a for region, a in sorted(accounts.items()) if len(a) == 2}


def _image_account(scope: str) -> dict:
    return {"Fn::FindInMap": [IMAGE_MAPPING, _ref("AWS::Region"), scope]}


def framework_image_uri(config: Config, scope: str) -> dict:
    """The framework's CPU image for the stack's region (as image_uris.retrieve names it)."""
    pc = config.pipeline
    return {"Fn::Sub": [
        f"${{Account}}.dkr.ecr.${{AWS::Region}}.${{AWS::URLSuffix}}/{FRAMEWORK}-{scope.lower()}:"
        f"{pc.framework_version}-cpu-{pc.py_version}", {"Account": _image_account(scope)}]}


def _sagemaker_execution_role(resources: dict) -> None:
    resources["SageMakerExecutionRole"] = _role(
        ["sagemaker.amazonaws.com"],
        "The SageMaker pipeline's steps and the deployed models: read and write the "
        "artifact bucket, pull the framework images, register model versions", [
            _statement("ProjectBucket", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                         "s3:AbortMultipartUpload"], _bucket_objects()),
            _statement("ListProjectBucket", ["s3:ListBucket", "s3:GetBucketLocation"],
                       _bucket_arn()),
            _kms_statement(["kms:Decrypt", "kms:GenerateDataKey", "kms:Encrypt"]),
            # GetAuthorizationToken has no resource: it only yields a login token
            _statement("EcrLogin", ["ecr:GetAuthorizationToken"], "*"),
            _statement("PullFrameworkImages", [
                "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                "ecr:GetDownloadUrlForLayer"],
                # the framework's repositories in the region's Deep Learning Containers
                # account (FrameworkImageAccounts, from the SDK's image_uris)
                [{"Fn::Sub": [f"{ARN}:ecr:${{AWS::Region}}:${{Account}}:repository/"
                              f"{FRAMEWORK}-{scope.lower()}", {"Account": _image_account(scope)}]}
                 for scope in ("Training", "Inference")]),
            _statement("JobLogs", ["logs:CreateLogGroup", "logs:CreateLogStream",
                                   "logs:DescribeLogStreams", "logs:PutLogEvents"],
                       _sub(f"{ARN}:logs:{REGION_ACCOUNT}:log-group:/aws/sagemaker/*")),
            _statement("JobMetrics", ["cloudwatch:PutMetricData"], "*",
                       {"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*",
                                                                "aws/sagemaker/*"]}}),
            _statement("PipelineJobs", [
                "sagemaker:AddTags", "sagemaker:CreateProcessingJob",
                "sagemaker:CreateTrainingJob", "sagemaker:DescribeProcessingJob",
                "sagemaker:DescribeTrainingJob", "sagemaker:StopProcessingJob",
                "sagemaker:StopTrainingJob"], [
                # SageMaker Pipelines names the jobs it starts itself (pipelines-<id>-...)
                _sagemaker_arn("processing-job/*"), _sagemaker_arn("training-job/*")]),
            # Kept deliberately: SageMaker Pipelines' default experiment config (an
            # experiment named after the pipeline, a trial per execution) is what Studio's
            # Experiments view lists; the pipeline's jobs join it as trial components.
            _statement("PipelineExperiments", [
                "sagemaker:AddTags", "sagemaker:AssociateTrialComponent",
                "sagemaker:CreateExperiment", "sagemaker:CreateTrial",
                "sagemaker:DescribeExperiment", "sagemaker:DescribeTrial"], [
                _sagemaker_arn(f"experiment/{sagemaker_arn_name()}"),
                _sagemaker_arn("experiment-trial/*"),
                _sagemaker_arn("experiment-trial-component/*")]),
            _statement("RegisterModelVersions", [
                "sagemaker:AddTags", "sagemaker:CreateModelPackage",
                "sagemaker:DescribeModelPackage", "sagemaker:DescribeModelPackageGroup",
                "sagemaker:UpdateModelPackage"], [
                _sagemaker_arn(f"model-package-group/{sagemaker_arn_name()}"),
                _sagemaker_arn(MODEL_PACKAGES)]),
        ])
    # a separate policy: the role's own ARN in its inline policy would be a cycle
    resources["SageMakerExecutionRolePassSelf"] = {
        "Type": "AWS::IAM::RolePolicy",
        "Properties": {"RoleName": _ref("SageMakerExecutionRole"),
                       "PolicyName": "pass-itself-to-pipeline-jobs",
                       "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                           _statement("PassToJobs", ["iam:PassRole"],
                                      _arn("SageMakerExecutionRole"),
                                      {"StringEquals": {"iam:PassedToService":
                                                        "sagemaker.amazonaws.com"}})]}}}


def _model_build(resources: dict) -> None:
    resources["ModelBuildLogGroup"] = _log_group(
        _sub("/aws/codebuild/${SageMakerProjectName}-modelbuild"))
    resources["ModelBuildRole"] = _role(
        ["codebuild.amazonaws.com"],
        "The model build: upsert and start the SageMaker pipeline, upload its code", [
            _statement("Logs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                       [_arn("ModelBuildLogGroup"), _sub("${ModelBuildLogGroup.Arn}:*")]),
            _statement("ProjectBucket", ["s3:GetObject", "s3:GetObjectVersion",
                                         "s3:PutObject"], _bucket_objects()),
            _statement("ListProjectBucket", ["s3:GetBucketLocation", "s3:ListBucket"],
                       _bucket_arn()),
            _kms_statement(["kms:Decrypt", "kms:GenerateDataKey"]),
            _statement("UpsertAndStartPipeline", [
                "sagemaker:AddTags", "sagemaker:CreatePipeline", "sagemaker:DescribePipeline",
                "sagemaker:DescribePipelineExecution", "sagemaker:ListPipelineExecutionSteps",
                # Pipeline.upsert merges the pipeline's existing tags with ours
                "sagemaker:ListTags",
                "sagemaker:StartPipelineExecution", "sagemaker:UpdatePipeline"], [
                _sub(PIPELINE_ARN_PATTERN), _sub(f"{PIPELINE_ARN_PATTERN}/execution/*")]),
            _statement("PassPipelineRole", ["iam:PassRole"], _arn("SageMakerExecutionRole"),
                       {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}),
        ])
    environment = {
        "SAGEMAKER_PROJECT_NAME": _ref("SageMakerProjectName"),
        "SAGEMAKER_PROJECT_ID": _ref("SageMakerProjectId"),
        "SAGEMAKER_PROJECT_ARN": _sagemaker_arn("project/${SageMakerProjectName}"),
        "SAGEMAKER_PIPELINE_ROLE_ARN": _arn("SageMakerExecutionRole"),
        "ARTIFACT_BUCKET": _ref("ArtifactBucket"),
        # the labelled images the build snapshots (`scones data snapshot`) to train on
        "TRAINING_DATA_URL": _sub("s3://${ArtifactBucket}/${TrainingDataPrefix}"),
        "TEST_SOURCE_KEY": TEST_SOURCE_KEY,
    }
    resources["ModelBuildProject"] = {
        "Type": "AWS::CodeBuild::Project",
        "Metadata": _checkov_skips(
            ("CKV_AWS_147", "encrypted with KmsKeyArn when one is given (Fn::If); the "
                            "AWS-managed S3 key otherwise")),
        "Properties": {
            "Name": _sub("${SageMakerProjectName}-modelbuild"),
            "Description": "Upserts the SageMaker pipeline from the project's code and "
                           "starts it (run-pipeline, as the SageMaker project templates do)",
            "ServiceRole": _arn("ModelBuildRole"),
            "Artifacts": {"Type": "CODEPIPELINE"},
            "Source": {"Type": "CODEPIPELINE", "BuildSpec": BUILDSPEC},
            "Environment": {
                "Type": "LINUX_CONTAINER", "ComputeType": "BUILD_GENERAL1_SMALL",
                "Image": CODEBUILD_IMAGE,
                "EnvironmentVariables": [{"Name": k, "Value": v, "Type": "PLAINTEXT"}
                                         for k, v in environment.items()]},
            "EncryptionKey": _if("HasKmsKey", _ref("KmsKeyArn")),
            "LogsConfig": {"CloudWatchLogs": {"Status": "ENABLED",
                                              "GroupName": _ref("ModelBuildLogGroup")}},
            "TimeoutInMinutes": 480,  # run-pipeline waits for the pipeline execution
            "Tags": _project_tags()}}

    resources["ModelBuildPipelineRole"] = _role(
        ["codepipeline.amazonaws.com"],
        "The model build CodePipeline: read the source, run the build", [
            _statement("ArtifactStore", ["s3:GetObject", "s3:GetObjectVersion",
                                         "s3:PutObject"], _bucket_objects()),
            _statement("ListArtifactStore", ["s3:GetBucketLocation", "s3:GetBucketVersioning",
                                             "s3:ListBucket"], _bucket_arn()),
            _kms_statement(["kms:Decrypt", "kms:GenerateDataKey"]),
            _statement("RunBuild", ["codebuild:BatchGetBuilds", "codebuild:StartBuild"],
                       _arn("ModelBuildProject")),
            _if("UseCodeConnection", _statement(
                "UseConnection", ["codeconnections:UseConnection",
                                  "codestar-connections:UseConnection"],
                _ref("CodeConnectionArn"))),
        ])
    connection_source = {
        "Name": "ProjectCode",
        "ActionTypeId": {"Category": "Source", "Owner": "AWS", "Version": "1",
                         "Provider": "CodeStarSourceConnection"},
        "Configuration": {"ConnectionArn": _ref("CodeConnectionArn"),
                          "FullRepositoryId": _ref("RepositoryFullName"),
                          "BranchName": _ref("RepositoryBranch"),
                          "OutputArtifactFormat": "CODE_ZIP"},
        "OutputArtifacts": [{"Name": "Source"}], "RunOrder": 1}
    s3_source = {
        "Name": "ProjectCode",
        "ActionTypeId": {"Category": "Source", "Owner": "AWS", "Version": "1",
                         "Provider": "S3"},
        "Configuration": {"S3Bucket": _ref("ArtifactBucket"),
                          "S3ObjectKey": _ref("SourceObjectKey"),
                          "PollForSourceChanges": "false"},  # ModelBuildSourceRule starts it
        "OutputArtifacts": [{"Name": "Source"}], "RunOrder": 1}
    resources["ModelBuildPipeline"] = {
        "Type": "AWS::CodePipeline::Pipeline",
        "Metadata": _checkov_skips(
            ("CKV_AWS_219", "the artifact store uses KmsKeyArn when one is given "
                            "(Fn::If); the bucket's default encryption otherwise")),
        "Properties": {
            "Name": _sub("${SageMakerProjectName}-modelbuild"),
            "RoleArn": _arn("ModelBuildPipelineRole"),
            "PipelineType": "V2",
            "ExecutionMode": "QUEUED",  # a push during a build runs after it, not instead
            "ArtifactStore": {
                "Type": "S3", "Location": _ref("ArtifactBucket"),
                "EncryptionKey": _if("HasKmsKey", {"Id": _ref("KmsKeyArn"), "Type": "KMS"})},
            "Stages": [
                {"Name": "Source",
                 "Actions": [_if("UseCodeConnection", connection_source, s3_source)]},
                {"Name": "Build", "Actions": [{
                    "Name": "UpsertAndRunSageMakerPipeline",
                    "ActionTypeId": {"Category": "Build", "Owner": "AWS", "Version": "1",
                                     "Provider": "CodeBuild"},
                    "Configuration": {"ProjectName": _ref("ModelBuildProject")},
                    "InputArtifacts": [{"Name": "Source"}], "RunOrder": 1}]}],
            "Tags": _project_tags()}}

    pipeline_arn = _sub(MODEL_BUILD_ARN)
    resources["ModelBuildSourceRuleRole"] = _role(
        ["events.amazonaws.com"], "A new source zip starts the model build", [
            _statement("StartModelBuild", ["codepipeline:StartPipelineExecution"],
                       pipeline_arn)], condition="UseS3Source")
    resources["ModelBuildSourceRule"] = {
        "Type": "AWS::Events::Rule", "Condition": "UseS3Source",
        "Properties": {
            "Description": "A new source zip in the artifact bucket -> model build",
            "State": "ENABLED", "Tags": _project_tags(),
            "EventPattern": {"source": ["aws.s3"], "detail-type": ["Object Created"],
                             "detail": {"bucket": {"name": [_ref("ArtifactBucket")]},
                                        "object": {"key": [_ref("SourceObjectKey")]}}},
            "Targets": [{"Id": "model-build", "Arn": pipeline_arn,
                         "RoleArn": _arn("ModelBuildSourceRuleRole")}]}}


def _retraining(resources: dict) -> None:
    """Retraining starts the model build, not the SageMaker pipeline: the build snapshots
    the labelled data under TrainingDataPrefix and trains on that snapshot. Started with the
    prefix itself as InputDataUrl, the pipeline would find its steps cached (SageMaker's step
    cache keys on the URL, not on the data behind it) and train on the old data."""
    retry = {"MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 10}
    resources["RetrainingRole"] = _role(
        ["events.amazonaws.com", "scheduler.amazonaws.com"],
        "Retraining schedule, new-data and drift rules: start the model build", [
            _statement("StartModelBuild", ["codepipeline:StartPipelineExecution"],
                       _sub(MODEL_BUILD_ARN)),
            # Scheduler sends undeliverable starts to the dead-letter queue as this role
            _statement("DeadLetters", ["sqs:SendMessage"], _arn("DeadLetterQueue")),
        ])
    resources["RetrainingSchedule"] = {
        "Type": "AWS::Scheduler::Schedule",
        "Properties": {
            "Name": _sub("${SageMakerProjectName}-retraining"),
            "Description": "Retrain on a schedule (RetrainOnSchedule)",
            "State": _if("RetrainOnScheduleEnabled", "ENABLED", "DISABLED"),
            "ScheduleExpression": _ref("RetrainingScheduleExpression"),
            "FlexibleTimeWindow": {"Mode": "FLEXIBLE", "MaximumWindowInMinutes": 60},
            "Target": {"Arn": _sub(MODEL_BUILD_ARN), "RoleArn": _arn("RetrainingRole"),
                       "RetryPolicy": retry,
                       "DeadLetterConfig": {"Arn": _arn("DeadLetterQueue")}}}}
    key_pattern = _if("HasNewDataMarker",
                      [{"wildcard": _sub("${TrainingDataPrefix}*${NewDataMarker}")}],
                      [{"prefix": _ref("TrainingDataPrefix")}])
    resources["NewDataRule"] = {
        "Type": "AWS::Events::Rule",
        "Properties": {
            "Description": "New labelled data under TrainingDataPrefix -> retrain "
                           "(RetrainOnNewData)",
            "State": _if("RetrainOnNewDataEnabled", "ENABLED", "DISABLED"),
            "Tags": _project_tags(),
            "EventPattern": {"source": ["aws.s3"], "detail-type": ["Object Created"],
                             "detail": {"bucket": {"name": [_ref("ArtifactBucket")]},
                                        "object": {"key": key_pattern}}},
            "Targets": [{"Id": "model-build", "Arn": _sub(MODEL_BUILD_ARN),
                         "RoleArn": _arn("RetrainingRole"),
                         "RetryPolicy": retry,
                         "DeadLetterConfig": {"Arn": _arn("DeadLetterQueue")}}]}}


MONITORING_REPORTS = "monitoring/reports"


def _monitoring_job_request(config: Config) -> str:
    """CreateProcessingJob's request, as the schedule's Input (a Fn::Sub template): the
    project's code as the model build published it, run by the training image's python."""
    prod = sagemaker_name("-prod")
    settings = {"aws.bucket": "${ArtifactBucket}", "aws.role_arn": "${SageMakerExecutionRole.Arn}",
                "aws.region": "${AWS::Region}", "pipeline.name": PIPELINE_NAME,
                "pipeline.model_package_group": PIPELINE_NAME,
                "workflow.endpoint_name": prod,
                "data.input_url": "s3://${ArtifactBucket}/${TrainingDataPrefix}",
                "monitoring.alarm_violations": "${MonitoringAlarmViolations}"}
    command = (
        "set -e; cd /opt/ml/processing/input/source; python -m zipfile -e "
        "model-build-source.zip project; cd project; PYTHONPATH=. python -m app.cli.main "
        "monitor run --env aws --since ${MonitoringWindow} --source "
        f"s3://${{ArtifactBucket}}/datacapture/prod/{prod}/ --out /opt/ml/processing/report "
        + " ".join(f"--set {key}={value}" for key, value in settings.items()))
    pc = config.pipeline
    # the training image of the stack's region (its account from FrameworkImageAccounts)
    image = (f"${{TrainingImageAccount}}.dkr.ecr.${{AWS::Region}}.${{AWS::URLSuffix}}/"
             f"{FRAMEWORK}-training:{pc.framework_version}-cpu-{pc.py_version}")
    request = {
        # the schedule's execution id makes every run's name (and report folder) unique
        "ProcessingJobName": "monitor-<aws.scheduler.execution-id>",
        "RoleArn": "${SageMakerExecutionRole.Arn}",
        "AppSpecification": {"ImageUri": image, "ContainerEntrypoint": ["bash", "-c", command]},
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": 1, "InstanceType": pc.processing_instance_type,
            "VolumeSizeInGB": 30}},
        "ProcessingInputs": [{"InputName": "source", "S3Input": {
            "S3Uri": f"s3://${{ArtifactBucket}}/{TEST_SOURCE_KEY}",
            "LocalPath": "/opt/ml/processing/input/source", "S3DataType": "S3Prefix",
            "S3InputMode": "File"}}],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "report", "S3Output": {
            "S3Uri": f"s3://${{ArtifactBucket}}/{MONITORING_REPORTS}/"
                     "<aws.scheduler.execution-id>",
            "LocalPath": "/opt/ml/processing/report", "S3UploadMode": "EndOfJob"}}]},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    }
    return json.dumps(request, separators=(",", ":"))


def _monitoring(resources: dict, config: Config) -> None:
    job_arn = _sagemaker_arn("processing-job/monitor-*")
    resources["MonitoringScheduleRole"] = _role(
        ["scheduler.amazonaws.com"],
        "Monitoring schedule: start the monitoring processing job", [
            _statement("StartMonitoringJob", ["sagemaker:CreateProcessingJob"], job_arn),
            _statement("PassExecutionRole", ["iam:PassRole"], _arn("SageMakerExecutionRole"),
                       {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}),
            _statement("DeadLetters", ["sqs:SendMessage"], _arn("DeadLetterQueue")),
        ], condition="HasMonitoringSchedule")
    # What the job itself does as the execution role: read the registry's baselines and
    # publish its metrics (the bucket it already reads and writes).
    resources["MonitoringJobPolicy"] = {
        "Type": "AWS::IAM::RolePolicy", "Condition": "HasMonitoringSchedule",
        "Properties": {"RoleName": _ref("SageMakerExecutionRole"),
                       "PolicyName": "monitoring-job",
                       "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                           _statement("MonitoringMetrics", ["cloudwatch:PutMetricData"], "*",
                                      {"StringEquals": {"cloudwatch:namespace":
                                                        config.monitoring.metrics_namespace}}),
                           # ListModelPackages has no resource-level permissions
                           _statement("FindModelVersions", ["sagemaker:ListModelPackages"],
                                      "*"),
                           # capture records carry no model version: the job asks prod
                           # which version it serves, for that version's baseline
                           _statement("WhichVersionProdServes", [
                               "sagemaker:DescribeEndpoint", "sagemaker:DescribeEndpointConfig",
                               "sagemaker:DescribeModel"], [
                               _sagemaker_arn(f"endpoint/{sagemaker_arn_name('-prod')}"),
                               _sagemaker_arn("endpoint-config/"
                                              + sagemaker_arn_name("-prod-v*")),
                               _sagemaker_arn(f"model/{sagemaker_arn_name('-prod-v*')}")])]}}}
    resources["MonitoringJobSchedule"] = {
        "Type": "AWS::Scheduler::Schedule", "Condition": "HasMonitoringSchedule",
        "Properties": {
            "Name": _sub("${SageMakerProjectName}-monitoring"),
            "Description": "The monitoring job (scones monitor run) on the prod capture",
            "State": "ENABLED",
            "ScheduleExpression": _ref("MonitoringSchedule"),
            # each run reads back exactly one MonitoringWindow: no flexible window
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "Target": {"Arn": "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob",
                       "RoleArn": _arn("MonitoringScheduleRole"),
                       "Input": {"Fn::Sub": [
                           _monitoring_job_request(config),
                           {"TrainingImageAccount": _image_account("Training")}]},
                       "RetryPolicy": {"MaximumEventAgeInSeconds": 3600,
                                       "MaximumRetryAttempts": 3},
                       "DeadLetterConfig": {"Arn": _arn("DeadLetterQueue")}}}}
    resources["DriftAlarm"] = {
        "Type": "AWS::CloudWatch::Alarm", "Condition": "HasMonitoringSchedule",
        "Properties": {
            "AlarmName": _sub("${SageMakerProjectName}-monitoring-violations"),
            "AlarmDescription": "A monitoring run found drift or quality violations "
                                "(constraint_violations.json in MonitoringReports): retrain",
            "Namespace": config.monitoring.metrics_namespace, "MetricName": "Violations",
            "Dimensions": [{"Name": "Endpoint", "Value": endpoint_name("prod")}],
            "Statistic": "Maximum", "Period": 3600, "EvaluationPeriods": 1,
            "Threshold": _ref("MonitoringAlarmViolations"),
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching", "Tags": _project_tags()}}
    resources["DriftAlarmRetrainRule"] = {
        "Type": "AWS::Events::Rule", "Condition": "HasMonitoringSchedule",
        "Properties": {
            "Description": "The drift alarm going into ALARM -> retrain (once per episode)",
            "State": "ENABLED", "Tags": _project_tags(),
            "EventPattern": {"source": ["aws.cloudwatch"],
                             "detail-type": ["CloudWatch Alarm State Change"],
                             "resources": [_arn("DriftAlarm")],
                             "detail": {"state": {"value": ["ALARM"]}}},
            "Targets": [{"Id": "model-build", "Arn": _sub(MODEL_BUILD_ARN),
                         "RoleArn": _arn("RetrainingRole"),
                         "RetryPolicy": {"MaximumEventAgeInSeconds": 3600,
                                         "MaximumRetryAttempts": 10},
                         "DeadLetterConfig": {"Arn": _arn("DeadLetterQueue")}}]}}


def _notifications(resources: dict) -> None:
    resources["NotificationTopic"] = {
        "Type": "AWS::SNS::Topic",
        "Metadata": _checkov_skips(
            ("CKV_AWS_26", "encrypted with KmsKeyArn when one is given (its key policy must "
                           "let cloudwatch.amazonaws.com use it); not with the AWS-managed "
                           "SNS key, whose policy CloudWatch alarms cannot use, so their "
                           "notifications would be dropped")),
        "Properties": {"DisplayName": _sub("${SageMakerProjectName} deployments"),
                       "KmsMasterKeyId": _if("HasKmsKey", _ref("KmsKeyArn")),
                       "Tags": _project_tags()}}
    resources["NotificationEmailSubscription"] = {
        "Type": "AWS::SNS::Subscription", "Condition": "HasNotificationEmail",
        "Properties": {"TopicArn": _ref("NotificationTopic"), "Protocol": "email",
                       "Endpoint": _ref("NotificationEmail")}}
    resources["NotificationTopicPolicy"] = {
        "Type": "AWS::SNS::TopicPolicy",
        "Properties": {"Topics": [_ref("NotificationTopic")], "PolicyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Sid": "AlarmsPublish", "Effect": "Allow",
                           "Principal": {"Service": "cloudwatch.amazonaws.com"},
                           "Action": "sns:Publish", "Resource": _ref("NotificationTopic"),
                           "Condition": {"StringEquals": {
                               "aws:SourceAccount": _ref("AWS::AccountId")}}}]}}}
    resources["DeadLetterQueue"] = {
        "Type": "AWS::SQS::Queue",
        "Metadata": _checkov_skips(
            ("CKV_AWS_27", "encrypted at rest with SQS-managed keys (SqsManagedSseEnabled), "
                           "which this check does not recognise; the AWS-managed KMS key "
                           "would lock EventBridge out of its own dead-letter queue")),
        "Properties": {
            "MessageRetentionPeriod": 1209600,  # 14 days, the most SQS keeps
            "SqsManagedSseEnabled": True,
            "Tags": _project_tags()}}
    resources["DeadLetterQueuePolicy"] = {
        "Type": "AWS::SQS::QueuePolicy",
        "Properties": {"Queues": [_ref("DeadLetterQueue")], "PolicyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Sid": "UndeliveredEvents", "Effect": "Allow",
                           "Principal": {"Service": "events.amazonaws.com"},
                           "Action": "sqs:SendMessage", "Resource": _arn("DeadLetterQueue"),
                           "Condition": {"ArnEquals": {"aws:SourceArn": [
                               _arn("ModelApprovedRule"), _arn("NewDataRule"),
                               _if("HasMonitoringSchedule",
                                   _arn("DriftAlarmRetrainRule"))]}}}]}}}
    resources["DeadLetterAlarm"] = {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmDescription": "An approval or retraining event could not be delivered: it "
                                "waits in the dead-letter queue (redrive it)",
            "Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
            "Dimensions": [{"Name": "QueueName",
                            "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}],
            "Statistic": "Maximum", "Period": 300, "EvaluationPeriods": 1,
            "Threshold": 1, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching",
            "AlarmActions": [_ref("NotificationTopic")], "Tags": _project_tags()}}


def _endpoint_alarms(resources: dict) -> None:
    for stage in STAGES:
        cap = stage.capitalize()
        names = alarm_names(stage)
        dimensions = [{"Name": "EndpointName", "Value": endpoint_name(stage)},
                      {"Name": "VariantName", "Value": VARIANT_NAME}]
        resources[f"{cap}Invocation5xxAlarm"] = {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": names["Invocation5xxAlarm"],
                "AlarmDescription": f"{stage}: the model answered 5XX; rolls a blue/green "
                                    "deployment back",
                "Namespace": "AWS/SageMaker", "MetricName": "Invocation5XXErrors",
                "Dimensions": dimensions, "Statistic": "Sum", "Period": 60,
                "EvaluationPeriods": 2, "DatapointsToAlarm": 1, "Threshold": 1,
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                "TreatMissingData": "notBreaching", "Tags": _project_tags()}}
        resources[f"{cap}ModelLatencyAlarm"] = {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": names["ModelLatencyAlarm"],
                "AlarmDescription": f"{stage}: average ModelLatency above "
                                    "LatencyAlarmMicroseconds; rolls a blue/green "
                                    "deployment back",
                "Namespace": "AWS/SageMaker", "MetricName": "ModelLatency",
                "Dimensions": dimensions, "Statistic": "Average", "Period": 60,
                "EvaluationPeriods": 3, "DatapointsToAlarm": 2,
                "Threshold": _ref("LatencyAlarmMicroseconds"),
                "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "notBreaching", "Tags": _project_tags()}}


def _model_deploy(resources: dict, config: Config) -> None:
    resources["StagingTestLogGroup"] = _log_group(
        _sub("/aws/codebuild/${SageMakerProjectName}-staging-test"))
    staging_endpoint = _sagemaker_arn(f"endpoint/{sagemaker_arn_name('-staging')}")
    resources["StagingTestRole"] = _role(
        ["codebuild.amazonaws.com"],
        "The staging test: read the project's code and test images, call staging", [
            _statement("Logs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                       [_arn("StagingTestLogGroup"), _sub("${StagingTestLogGroup.Arn}:*")]),
            _statement("ReadProjectBucket", ["s3:GetObject", "s3:GetObjectVersion"],
                       _bucket_objects()),
            _statement("ListProjectBucket", ["s3:GetBucketLocation", "s3:ListBucket"],
                       _bucket_arn()),
            _kms_statement(["kms:Decrypt"]),
            _statement("CallStaging", ["sagemaker:DescribeEndpoint",
                                       "sagemaker:InvokeEndpoint"], staging_endpoint),
            # which version staging serves: its config's model names the package
            _statement("WhichVersionServes", ["sagemaker:DescribeEndpointConfig",
                                              "sagemaker:DescribeModel"], [
                _sagemaker_arn(f"{kind}/{sagemaker_arn_name('-staging-v*')}")
                for kind in ("endpoint-config", "model")]),
            # the test's result is recorded with the version (CustomerMetadataProperties)
            _statement("ReadAndRecordVersion", ["sagemaker:DescribeModelPackage",
                                                "sagemaker:UpdateModelPackage"],
                       _sagemaker_arn(MODEL_PACKAGES)),
            # ListModelPackages has no resource-level permissions
            _statement("FindVersions", ["sagemaker:ListModelPackages"], "*"),
            # the test images go through the inference workflow, as production's do
            _statement("StageTestImages", ["s3:PutObject"], _bucket_objects("workflow-input/")),
            _if("DeployWorkflow", _statement(
                "RunInferenceWorkflow", ["states:DescribeStateMachine",
                                         "states:StartExecution"],
                _ref("InferenceStateMachine"))),
            _if("DeployWorkflow", _statement(
                "FollowInferenceRuns", ["states:DescribeExecution"],
                _sub(f"{ARN}:states:{REGION_ACCOUNT}:execution:"
                     "${SageMakerProjectName}-inference:*"))),
        ])
    resources["StagingTestProject"] = {
        "Type": "AWS::CodeBuild::Project",
        "Metadata": _checkov_skips(
            ("CKV_AWS_147", "encrypted with KmsKeyArn when one is given (Fn::If); the "
                            "AWS-managed S3 key otherwise")),
        "Properties": {
            "Name": _sub("${SageMakerProjectName}-staging-test"),
            "Description": "The deploy state machine's test stage: StagingTestCommand "
                           "against the staging endpoint, in the code the model was built "
                           f"from (the model build publishes it to {TEST_SOURCE_KEY})",
            "ServiceRole": _arn("StagingTestRole"),
            "Artifacts": {"Type": "NO_ARTIFACTS"},
            "Source": {"Type": "S3", "Location": _sub(f"${{ArtifactBucket}}/{TEST_SOURCE_KEY}"),
                       "BuildSpec": _sub(
                           "version: 0.2\nphases:\n  install:\n    runtime-versions:\n"
                           "      python: 3.11\n    commands:\n"
                           "      - pip install --no-deps .\n"
                           "      - pip install -c constraints.txt "
                           + " ".join(shlex.quote(p) for p in STAGING_TEST_PACKAGES) + "\n"
                           "  build:\n    commands:\n      - ${StagingTestCommand}\n")},
            "Environment": {
                "Type": "LINUX_CONTAINER", "ComputeType": "BUILD_GENERAL1_SMALL",
                "Image": CODEBUILD_IMAGE,
                # the project's names, for StagingTestCommand's --set (the config's
                # defaults are not this project's)
                "EnvironmentVariables": [{"Name": k, "Value": v, "Type": "PLAINTEXT"} for k, v in {
                    "ARTIFACT_BUCKET": _ref("ArtifactBucket"),
                    "MODEL_PACKAGE_GROUP": _sub(PIPELINE_NAME),
                    "STATE_MACHINE_NAME": _sub("${SageMakerProjectName}-inference"),
                    "PROD_ENDPOINT_NAME": endpoint_name("prod")}.items()]},
            "EncryptionKey": _if("HasKmsKey", _ref("KmsKeyArn")),
            "LogsConfig": {"CloudWatchLogs": {"Status": "ENABLED",
                                              "GroupName": _ref("StagingTestLogGroup")}},
            "TimeoutInMinutes": 60,
            "Tags": _project_tags()}}

    endpoints = [_sagemaker_arn(f"endpoint/{sagemaker_arn_name(f'-{s}')}") for s in STAGES]
    per_stage = [_sagemaker_arn(f"{kind}/{sagemaker_arn_name(f'-{s}-v*')}")
                 for s in STAGES for kind in ("model", "endpoint-config")]
    alarm_arns = [_sub(f"{ARN}:cloudwatch:{REGION_ACCOUNT}:alarm:${{SageMakerProjectName}}-"
                       f"{s}-*") for s in STAGES]
    resources["DeployStateMachineRole"] = _role(
        ["states.amazonaws.com"],
        "The deploy state machine: models, endpoint configs and endpoints of the two "
        "stages, the test build, the approval message, autoscaling", [
            _statement("ReadApprovedVersions", ["sagemaker:DescribeModelPackage"],
                       _sagemaker_arn(MODEL_PACKAGES)),
            _statement("ModelsAndConfigs", [
                "sagemaker:AddTags", "sagemaker:CreateEndpointConfig", "sagemaker:CreateModel",
                "sagemaker:DescribeEndpointConfig", "sagemaker:DescribeModel"],
                per_stage + [_sagemaker_arn(MODEL_PACKAGES)]),
            _statement("Endpoints", [
                "sagemaker:AddTags", "sagemaker:CreateEndpoint", "sagemaker:DescribeEndpoint",
                "sagemaker:UpdateEndpoint"], endpoints + per_stage[1::2]),
            _statement("PassModelRole", ["iam:PassRole"], _arn("SageMakerExecutionRole"),
                       {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}),
            _kms_statement(["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey",
                            "kms:GenerateDataKey"]),
            # SageMaker reads the rollback alarms as the caller of UpdateEndpoint
            _statement("RollbackAlarms", ["cloudwatch:DescribeAlarms"], alarm_arns),
            _statement("RunStagingTest", ["codebuild:BatchGetBuilds", "codebuild:StartBuild",
                                          "codebuild:StopBuild"], _arn("StagingTestProject")),
            # the rule Step Functions manages to learn when a .sync build ends
            _statement("SyncBuildRule", ["events:DescribeRule", "events:PutRule",
                                         "events:PutTargets"],
                       _sub(f"{ARN}:events:{REGION_ACCOUNT}:rule/"
                            "StepFunctionsGetEventsForCodeBuildStartBuildRule")),
            _statement("AskForPromotion", ["sns:Publish"], _ref("NotificationTopic")),
            # the promoted version's own confidence threshold, into the Lambdas applying it
            *[_if("DeployWorkflow", _statement(
                "ApplyPromotedThreshold", ["lambda:UpdateFunctionConfiguration"],
                [_sub(f"{ARN}:lambda:{REGION_ACCOUNT}:function:" + name["Fn::Sub"])
                 for name, _ in threshold_functions(config)]))][:len(threshold_functions(config))],
            _statement("Autoscaling", ["application-autoscaling:PutScalingPolicy",
                                       "application-autoscaling:RegisterScalableTarget"],
                       _sub(f"{ARN}:application-autoscaling:{REGION_ACCOUNT}:"
                            "scalable-target/*")),
            # Application Auto Scaling acts on a SageMaker variant as the caller: it reads
            # the endpoint and its config, sets the variant's capacity and manages the
            # target-tracking alarms (AWS: "Application Auto Scaling IAM permissions for
            # SageMaker"). The alarms are named TargetTracking-endpoint/<endpoint>/...
            _statement("AutoscalingActsOnVariants", [
                "sagemaker:DescribeEndpoint", "sagemaker:DescribeEndpointConfig",
                "sagemaker:UpdateEndpointWeightsAndCapacities"],
                endpoints + per_stage[1::2]),
            _statement("AutoscalingAlarms", ["cloudwatch:DeleteAlarms",
                                             "cloudwatch:DescribeAlarms",
                                             "cloudwatch:PutMetricAlarm"],
                       [_sub(f"{ARN}:cloudwatch:{REGION_ACCOUNT}:alarm:TargetTracking-"
                             f"endpoint/{sagemaker_arn_name(f'-{s}')}/*") for s in STAGES]),
            _statement("AutoscalingServiceRole", ["iam:CreateServiceLinkedRole"],
                       _sub(f"{ARN}:iam::${{AWS::AccountId}}:role/aws-service-role/"
                            "sagemaker.application-autoscaling.amazonaws.com/"
                            "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"),
                       {"StringEquals": {"iam:AWSServiceName":
                                         "sagemaker.application-autoscaling.amazonaws.com"}}),
        ])
    resources["DeployStateMachine"] = {
        "Type": "AWS::StepFunctions::StateMachine",
        "Metadata": _checkov_skips(
            ("CKV_AWS_284", "X-Ray would need xray:PutTraceSegments on '*'; the execution "
                            "history records every step of a deployment"),
            ("CKV_AWS_285", "execution logging needs logs:*LogDelivery on '*'; the "
                            "execution history (90 days) and the failure alarm suffice")),
        "Properties": {
            "StateMachineName": _sub("${SageMakerProjectName}-deploy"),
            "StateMachineType": "STANDARD",  # waits for endpoint updates, days for approval
            "RoleArn": _arn("DeployStateMachineRole"),
            "Definition": deploy_state_machine.deploy_definition(
                threshold_functions(config)),
            "Tags": _project_tags()}}
    resources["DeployFailedAlarm"] = {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmDescription": "A deployment failed, was rolled back or was refused",
            "Namespace": "AWS/States", "MetricName": "ExecutionsFailed",
            "Dimensions": [{"Name": "StateMachineArn", "Value": _ref("DeployStateMachine")}],
            "Statistic": "Sum", "Period": 300, "EvaluationPeriods": 1, "Threshold": 1,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching",
            "AlarmActions": [_ref("NotificationTopic")], "Tags": _project_tags()}}

    resources["ModelApprovedRuleRole"] = _role(
        ["events.amazonaws.com"], "An approval starts the deploy state machine", [
            _statement("StartDeploy", ["states:StartExecution"], _ref("DeployStateMachine"))])
    resources["ModelApprovedRule"] = {
        "Type": "AWS::Events::Rule",
        "Properties": {
            "Description": "An approved version of this project's model package group -> "
                           "staging, test, approval, prod",
            "State": "ENABLED", "Tags": _project_tags(),
            "EventPattern": {
                "source": ["aws.sagemaker"],
                "detail-type": ["SageMaker Model Package State Change"],
                "detail": {"ModelPackageGroupName": [_sub(PIPELINE_NAME)],
                           "ModelApprovalStatus": ["Approved"]}},
            "Targets": [{
                "Id": "deploy-state-machine", "Arn": _ref("DeployStateMachine"),
                "RoleArn": _arn("ModelApprovedRuleRole"),
                # StartExecution refused (throttled, service trouble): keep trying for a day,
                # then keep the event in the queue rather than lose the approval
                "RetryPolicy": {"MaximumEventAgeInSeconds": 86400,
                                "MaximumRetryAttempts": 185},
                "DeadLetterConfig": {"Arn": _arn("DeadLetterQueue")}}]}}


def _workflow_functions(config: Config) -> tuple[Config, dict]:
    """The Lambda table (workflow.definition.lambda_functions) with a sentinel prefix that
    the template replaces by the project's name; {key: function} of the inference and bulk
    workflows' functions."""
    sentinel_config = config.replace(workflow=dataclasses.replace(
        config.workflow, lambda_prefix=_FUNCTION_PREFIX_SENTINEL))
    functions = {k: f for k, f in lambda_functions(sentinel_config).items()
                 if f.in_workflow or f.in_bulk}
    return sentinel_config, functions


def _function_name(function) -> dict:
    return _sub(PROJECT + function.name.removeprefix(_FUNCTION_PREFIX_SENTINEL))


def _logical(key: str, suffix: str) -> str:
    return "".join(part.capitalize() for part in key.split("_")) + suffix


def _function_environment(function) -> dict:
    """The function's environment in the project: the endpoint it calls is prod's, unless
    the execution input names the staging endpoint (the staging test classifies through
    staging; lambdas.settings.endpoint_for checks the name against this list)."""
    environment = dict(function.environment)
    if "ENDPOINT_NAME" in environment:
        environment["ENDPOINT_NAME"] = endpoint_name("prod")
        environment["ALLOWED_ENDPOINT_NAMES"] = {"Fn::Join": [",", [
            endpoint_name(stage) for stage in STAGES]]}
    return environment


def threshold_functions(config: Config) -> list[tuple[dict, dict]]:
    """(FunctionName, Environment.Variables) of each Lambda that applies the confidence
    threshold: the deploy state machine sets the promoted version's own threshold there
    (UpdateFunctionConfiguration replaces the whole environment, hence all of it)."""
    if not config.workflow.use_model_threshold:
        return []
    _, functions = _workflow_functions(config)
    return [(_function_name(f), _function_environment(f)) for f in functions.values()
            if "CONFIDENCE_THRESHOLD" in f.environment]


def _asl_for_project(definition_json: str, sentinel_names: dict) -> dict:
    definition = json.loads(definition_json)

    def rename(node):  # the SDK's ASL names functions; name them after the project
        if isinstance(node, dict):
            return {k: rename(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rename(v) for v in node]
        if isinstance(node, str) and node in sentinel_names:
            return _function_name(sentinel_names[node])
        return node

    definition = rename(definition)
    if _FUNCTION_PREFIX_SENTINEL in json.dumps(definition):
        raise AssertionError("a function name in the workflow ASL was not renamed")
    return definition


def _inference_workflow(resources: dict, config: Config) -> None:
    """The inference workflow (three Lambdas, its state machine, the new-image rule) and
    the bulk workflow (three Lambdas, its Distributed Map state machine), from the same
    table and ASL the local engine runs, named after the project and pointed at prod."""
    sentinel_config, functions = _workflow_functions(config)
    sentinel_names = {f.name: f for f in functions.values()}
    inference = [f for f in functions.values() if f.in_workflow]
    bulk = [f for f in functions.values() if f.in_bulk]

    stage_endpoints = [_sagemaker_arn(f"endpoint/{sagemaker_arn_name(f'-{stage}')}")
                       for stage in STAGES]
    for function in functions.values():
        resources[_logical(function.key, "LogGroup")] = _log_group(
            _sub("/aws/lambda/" + PROJECT
                 + function.name.removeprefix(_FUNCTION_PREFIX_SENTINEL)), "DeployWorkflow")

    def log_statement(group):
        return _statement("WriteOwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                          [_sub(f"${{{_logical(f.key, 'LogGroup')}.Arn}}:*") for f in group])

    resources["WorkflowLambdaRole"] = _role(
        ["lambda.amazonaws.com"],
        "The inference workflow's Lambdas: read images, invoke the prod endpoint (and "
        "staging's, for the staging test), log", [
            log_statement(inference),
            _statement("ReadImages", ["s3:GetObject"], _bucket_objects()),
            # without ListBucket S3 answers a missing key with 403, not 404: the workflow
            # would report ImageNotReadable where the truth is ImageNotFound
            _statement("ListImages", ["s3:ListBucket"], _bucket_arn()),
            _kms_statement(["kms:Decrypt"]),
            _statement("InvokeEndpoint", ["sagemaker:InvokeEndpoint"], stage_endpoints),
        ], condition="DeployWorkflow")
    bulk_results = _bucket_objects(f"{RESULTS_PREFIX}/")
    resources["BulkLambdaRole"] = _role(
        ["lambda.amazonaws.com"],
        "The bulk workflow's Lambdas: list and read images, write run results, invoke the "
        "prod endpoint (and staging's, for the staging test), log", [
            log_statement(bulk),
            _statement("ListImages", ["s3:ListBucket"], _bucket_arn()),
            _statement("ReadImagesAndResults", ["s3:GetObject"], _bucket_objects()),
            _statement("WriteRunResults", ["s3:PutObject"], bulk_results),
            _kms_statement(["kms:Decrypt", "kms:GenerateDataKey"]),
            _statement("InvokeEndpoint", ["sagemaker:InvokeEndpoint"], stage_endpoints),
        ], condition="DeployWorkflow")
    function_ids = {}
    for function in functions.values():
        function_id = function_ids[function.key] = _logical(function.key, "Function")
        resources[function_id] = {
            "Type": "AWS::Lambda::Function", "Condition": "DeployWorkflow",
            "DependsOn": [_logical(function.key, "LogGroup")],
            "Metadata": _checkov_skips(
                ("CKV_AWS_116", "invoked synchronously by Step Functions, which catches "
                                "and reports every failure: a DLQ would never receive"),
                ("CKV_AWS_117", "calls only S3 and SageMaker's public endpoints; a VPC "
                                "would add NAT cost for no isolation gain"),
                ("CKV_AWS_115", "concurrency is bounded by the workflows' Map "
                                "concurrency (workflow.max_concurrency)"),
                ("CKV_AWS_173", "the environment holds names and thresholds, no secrets")),
            "Properties": {
                "FunctionName": _function_name(function),
                "Description": function.description,
                "Runtime": LAMBDA_RUNTIME,
                "Handler": function.handler,
                "Role": _arn("BulkLambdaRole" if function.in_bulk else "WorkflowLambdaRole"),
                "Code": {"S3Bucket": _ref("LambdaCodeBucket"),
                         "S3Key": _sub(f"${{LambdaCodeKeyPrefix}}{function.key}.zip")},
                "Timeout": function.timeout, "MemorySize": function.memory_size,
                "Environment": {"Variables": _function_environment(function)},
                "Tags": _project_tags()}}

    def invoke_targets(group):
        targets = []
        for function in group:
            function_id = function_ids[function.key]
            targets += [_arn(function_id), _sub(f"${{{function_id}.Arn}}:*")]
        return targets

    resources["InferenceStateMachineRole"] = _role(
        ["states.amazonaws.com"], "The inference state machine: invoke its three Lambdas", [
            _statement("InvokeWorkflowLambdas", ["lambda:InvokeFunction"],
                       invoke_targets(inference))],
        condition="DeployWorkflow")
    resources["InferenceStateMachine"] = {
        "Type": "AWS::StepFunctions::StateMachine", "Condition": "DeployWorkflow",
        "Metadata": _checkov_skips(
            ("CKV_AWS_284", "X-Ray would need xray:PutTraceSegments on '*'"),
            ("CKV_AWS_285", "execution logging needs logs:*LogDelivery on '*'; each "
                            "execution's history keeps its inputs and errors")),
        "Properties": {
            "StateMachineName": _sub("${SageMakerProjectName}-inference"),
            "StateMachineType": "STANDARD",
            "RoleArn": _arn("InferenceStateMachineRole"),
            # the SDK's ASL, as the local engine runs it
            "Definition": _asl_for_project(workflow_definition_json(sentinel_config),
                                           sentinel_names),
            "Tags": _project_tags()}}

    bulk_name = "${SageMakerProjectName}-inference-bulk"
    resources["BulkStateMachineRole"] = _role(
        ["states.amazonaws.com"],
        "The bulk state machine: invoke its Lambdas, run its Distributed Map's children, "
        "read its manifest and write its results", [
            _statement("InvokeBulkLambdas", ["lambda:InvokeFunction"], invoke_targets(bulk)),
            # a Distributed Map runs its children as executions of this same state machine
            _statement("RunChildExecutions", ["states:StartExecution"],
                       _sub(f"{ARN}:states:{REGION_ACCOUNT}:stateMachine:{bulk_name}")),
            _statement("ManageChildExecutions", ["states:DescribeExecution",
                                                 "states:StopExecution"],
                       _sub(f"{ARN}:states:{REGION_ACCOUNT}:execution:{bulk_name}/*")),
            # ItemReader reads the manifest; ResultWriter writes the Map's result files
            _statement("ReadManifestWriteResults", [
                "s3:AbortMultipartUpload", "s3:GetObject", "s3:ListMultipartUploadParts",
                "s3:PutObject"], bulk_results),
            _kms_statement(["kms:Decrypt", "kms:GenerateDataKey"]),
        ], condition="DeployWorkflow")
    resources["BulkStateMachine"] = {
        "Type": "AWS::StepFunctions::StateMachine", "Condition": "DeployWorkflow",
        "Metadata": _checkov_skips(
            ("CKV_AWS_284", "X-Ray would need xray:PutTraceSegments on '*'"),
            ("CKV_AWS_285", "execution logging needs logs:*LogDelivery on '*'; each "
                            "run's summary.json and result files are in the bucket")),
        "Properties": {
            "StateMachineName": _sub(bulk_name),
            "StateMachineType": "STANDARD",
            "RoleArn": _arn("BulkStateMachineRole"),
            "Definition": _asl_for_project(bulk_definition_json(sentinel_config),
                                           sentinel_names),
            "Tags": _project_tags()}}

    resources["NewImageRuleRole"] = _role(
        ["events.amazonaws.com"], "A new image starts the inference workflow", [
            _statement("StartInference", ["states:StartExecution"],
                       _ref("InferenceStateMachine"))], condition="DeployWorkflow")
    resources["NewImageRule"] = {
        "Type": "AWS::Events::Rule", "Condition": "DeployWorkflow",
        "Properties": {
            "Description": "A new object under IncomingPrefix -> classify it",
            "State": "ENABLED", "Tags": _project_tags(),
            "EventPattern": {"source": ["aws.s3"], "detail-type": ["Object Created"],
                             "detail": {"bucket": {"name": [_ref("ArtifactBucket")]},
                                        "object": {"key": [{"prefix": _ref("IncomingPrefix")}]}}},
            "Targets": [{
                "Id": "inference-workflow", "Arn": _ref("InferenceStateMachine"),
                "RoleArn": _arn("NewImageRuleRole"),
                "InputTransformer": {
                    "InputPathsMap": {"bucket": "$.detail.bucket.name",
                                      "key": "$.detail.object.key"},
                    "InputTemplate": '{"s3_bucket": <bucket>, "s3_key": <key>, '
                                     '"image_data": "", "inferences": []}'}}]}}


# ----------------------------------------------------------------------------- the template

def project_template(config: Config) -> dict:
    """The SageMaker Project template as a CloudFormation template dict (JSON-ready)."""
    resources: dict[str, dict] = {}
    _storage(resources)
    _sagemaker_execution_role(resources)
    _model_build(resources)
    _retraining(resources)
    _monitoring(resources, config)
    _notifications(resources)
    _endpoint_alarms(resources)
    _model_deploy(resources, config)
    _inference_workflow(resources, config)
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": (
            f"{config.project}: SageMaker Project for the delivery-vehicle classifier "
            f"({' vs '.join(config.classes)}) - model build (CodePipeline + CodeBuild "
            "upserting the SageMaker pipeline), model deploy (approval -> staging -> test -> "
            "manual approval -> prod with blue/green canary/linear and alarm rollback, by a "
            "Step Functions state machine), retraining triggers, inference workflow. "
            "Generated by infra.project_template; do not edit by hand."),
        "Metadata": {
            "DeploymentDesign": (
                "Endpoints are created and updated by the deploy state machine, not as stack "
                "resources: the model each stage serves changes with every approval, long "
                "after the stack was created. Consequence: deleting the stack does not "
                "delete the endpoints; run the EndpointCleanup output first."),
            "Provisioning": (
                "The stack creates IAM roles (CAPABILITY_IAM). As a Service Catalog product "
                "for Studio, give it a launch constraint role that may create them: the "
                "default AmazonSageMakerServiceCatalogProductsLaunchRole may not."),
            "PipelineDesign": (
                "The SageMaker pipeline is upserted by the model build (run-pipeline in "
                "codebuild-buildspec.yml), named <project name>-<project id>."),
            "AWS::CloudFormation::Interface": {"ParameterGroups": [
                {"Label": {"default": "Source"},
                 "Parameters": ["CodeConnectionArn", "RepositoryFullName",
                                "RepositoryBranch", "SourceObjectKey"]},
                {"Label": {"default": "Retraining"},
                 "Parameters": ["TrainingDataPrefix", "RetrainOnSchedule",
                                "RetrainingScheduleExpression", "RetrainOnNewData", "NewDataMarker"]},
                {"Label": {"default": "Monitoring"},
                 "Parameters": ["MonitoringSchedule", "MonitoringWindow",
                                "MonitoringAlarmViolations"]},
                {"Label": {"default": "Staging"},
                 "Parameters": [p for p in _parameters(config) if p.startswith("Staging")]},
                {"Label": {"default": "Prod"},
                 "Parameters": [p for p in _parameters(config) if p.startswith("Prod")]}]},
            "SagemakerTemplateParameterRules": {
                name: {"Optional": True} for name, p in _parameters(config).items()
                if "Default" in p},
        },
        "Parameters": _parameters(config),
        "Mappings": {IMAGE_MAPPING: framework_image_accounts(config)},
        "Conditions": _conditions(),
        "Resources": resources,
        "Outputs": {
            "ArtifactBucketName": {"Value": _ref("ArtifactBucket"),
                                   "Description": "aws.bucket"},
            "SageMakerExecutionRoleArn": {"Value": _arn("SageMakerExecutionRole"),
                                          "Description": "aws.role_arn"},
            "PipelineName": {"Value": _sub(PIPELINE_NAME),
                             "Description": "the SageMaker pipeline the build upserts"},
            "ModelPackageGroupName": {"Value": _sub(PIPELINE_NAME)},
            "DeployStateMachineArn": {"Value": _ref("DeployStateMachine")},
            "StagingEndpointName": {"Value": endpoint_name("staging")},
            "ProdEndpointName": {"Value": endpoint_name("prod")},
            "BulkStateMachineArn": {"Condition": "DeployWorkflow",
                                    "Value": _ref("BulkStateMachine"),
                                    "Description": "scones workflow run --env aws --prefix"},
            "InferenceStateMachineArn": {"Condition": "DeployWorkflow",
                                         "Value": _ref("InferenceStateMachine")},
            "WorkflowLambdaRoleArn": {"Condition": "DeployWorkflow",
                                      "Value": _arn("WorkflowLambdaRole"),
                                      "Description": "aws.lambda_role_arn"},
            "InferenceStateMachineRoleArn": {"Condition": "DeployWorkflow",
                                             "Value": _arn("InferenceStateMachineRole"),
                                             "Description": "aws.states_role_arn"},
            "EndpointCleanup": {
                "Description": "Endpoints are not stack resources: delete them before the "
                               "stack to stop their billing",
                "Value": _sub("; ".join(
                    "aws sagemaker delete-endpoint --endpoint-name " + sagemaker_name(f"-{s}")
                    for s in STAGES))},
            "MonitoringReports": {
                "Condition": "HasMonitoringSchedule",
                "Value": _sub(f"s3://${{ArtifactBucket}}/{MONITORING_REPORTS}"),
                "Description": "each monitoring run's report, constraint_violations.json and "
                               "summary.json, one folder per scheduled run"},
        },
    }


def template_json(config: Config) -> str:
    return json.dumps(project_template(config), indent=2) + "\n"


def write_template(config: Config, path: Path | str = TEMPLATE_PATH) -> Path:
    """Write the rendering atomically (never a half-written template under its name)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(template_json(config))
    tmp.replace(path)
    return path


def resolve_conditions(template: dict, values: dict[str, bool]) -> dict:
    """A copy with the Fn::If of the given conditions resolved, as CloudFormation would for
    those condition values (tests use it to check what each choice deploys)."""
    def walk(node):
        if isinstance(node, dict):
            if set(node) == {"Fn::If"} and node["Fn::If"][0] in values:
                name, then, otherwise = node["Fn::If"]
                return walk(then if values[name] else otherwise)
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(copy.deepcopy(template))
