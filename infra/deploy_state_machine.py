"""The model-deploy state machine of the SageMaker Project template, as an ASL `Definition`
object (CloudFormation resolves the Ref/Fn::Sub/Fn::If inside it).

    approved package -> staging (create or blue/green update, wait, autoscaling)
                     -> staging test (CodeBuild)
                     -> manual approval (SNS message with a task token)
                     -> prod (blue/green update with canary/linear shifting and
                        auto-rollback on the 5XX and latency alarms, wait, autoscaling)

Why a state machine and not endpoints as stack resources: the model a stage serves changes
with every approval, long after the stack was created, and updating the project stack from
inside itself (Service Catalog owns it) is not a deployment path. A Standard workflow waits
as long as an endpoint update takes (an approval made during an update is deployed after
it, not lost), and every step is idempotent:
  - model and endpoint-config names are derived from the package version
    (<project>-<project id>-<stage>-v<N>), so a duplicate event finds staging already serving that
    config and ends ("AlreadyServing") instead of redeploying;
  - an existing config or model of that name (a re-run, a rollback to an older version) is
    reused rather than created again.
What a wrong guess costs: DescribeEndpoint's "not found" is a ValidationException that the
SDK integration reports as a generic task failure, so any DescribeEndpoint failure is read
as "no endpoint yet"; CreateEndpoint then fails loudly if the endpoint does exist. A misread
can fail an execution, never deploy twice.
Endpoints created here outlive the stack: the template's EndpointCleanup output is the
command to delete them (see project_template).
"""
from __future__ import annotations

from typing import Any

STAGES = ("staging", "prod")
VARIANT_NAME = "AllTraffic"  # as lambdas/deploy_approved_model.py: one variant per endpoint
# The classifier answers JSON; capture stores it as text so monitoring reads it directly.
CAPTURE_JSON_CONTENT_TYPES = ["application/json"]
BUSY_STATES = ["Creating", "Updating", "SystemUpdating", "RollingBack"]
POLL_SECONDS = 60
# Errors worth trying again (the aws-sdk integration names them <Service>.<Error>Exception):
# throttling and the service's own trouble. Anything else (AccessDenied, a validation
# error, a missing resource) fails the execution at once, not hours later. "Update in
# progress" is read from the endpoint's status instead (see <Stage>UpdateRefused).
TRANSIENT_ERRORS = ["SageMaker.ThrottlingException", "SageMaker.ServiceUnavailableException",
                    "SageMaker.InternalFailureException", "SageMaker.InternalServerException",
                    "ApplicationAutoScaling.ConcurrentUpdateException",
                    "ApplicationAutoScaling.InternalServiceException",
                    "ApplicationAutoScaling.ThrottlingException",
                    "States.Timeout"]
# 5 + 10 + 20 + 40 + 80 s: at most about 2.5 minutes of retrying
RETRY_TRANSIENT = [{"ErrorEquals": TRANSIENT_ERRORS, "IntervalSeconds": 5, "MaxAttempts": 5,
                    "BackoffRate": 2.0}]
# SageMaker's TrafficRoutingConfig: a canary of at most 50 % of the variant's instances, linear
# steps of 10-50 %. Below this many instances neither fits: all at once, then baking.
MIN_INSTANCES_FOR_SHIFTING = 2
SAGEMAKER = "arn:aws:states:::aws-sdk:sagemaker"
AUTOSCALING = "arn:aws:states:::aws-sdk:applicationautoscaling"

STATE_DESCRIBE_PACKAGE = "DescribePackage"
STATE_STAGING_TEST = "StagingTest"
STATE_MANUAL_APPROVAL = "ManualApproval"
STATE_DEPLOYED = "DeployedToProd"
STATE_READ_THRESHOLD = "ProdReadThreshold"
LAMBDA = "arn:aws:states:::aws-sdk:lambda"
THRESHOLD_PROPERTY = "ConfidenceThreshold"  # scones.registry.CONFIDENCE_THRESHOLD_PROPERTY
# UpdateFunctionConfiguration while a previous update is in flight: ResourceConflict
RETRY_LAMBDA_UPDATE = [{"ErrorEquals": ["Lambda.ResourceConflictException",
                                        "Lambda.TooManyRequestsException",
                                        "Lambda.ServiceException"],
                        "IntervalSeconds": 5, "MaxAttempts": 5, "BackoffRate": 2.0}]


def _sub(text: str) -> dict:
    return {"Fn::Sub": text}


def _json_number(parameter: str) -> dict:
    """A number parameter as a JSON number inside the execution: CloudFormation's Ref gives
    a string, SageMaker wants an integer, States.StringToJson turns '2' into 2."""
    return _sub(f"States.StringToJson('${{{parameter}}}')")


# SageMaker resources (pipeline, model package group, endpoints, their configs and models)
# are named <project name>-<project id>[-<stage>[-v<N>]]: the name reads as the team chose
# it, in Studio too. SageMaker writes every such name lower case into its ARNs, IAM matches
# ARNs case-sensitively and CloudFormation cannot lower-case a name, so the roles' ARN
# patterns match on the id (lower case by SageMakerProjectId's pattern, and unique to the
# project) rather than the name, which Studio accepts in any case (Scones-Team1).
SAGEMAKER_PREFIX = "${SageMakerProjectName}-${SageMakerProjectId}"
SAGEMAKER_ARN_PREFIX = "*-${SageMakerProjectId}"


def sagemaker_name(suffix: str = "") -> str:
    """A SageMaker resource's name (Fn::Sub text): the project's name and id, then suffix."""
    return SAGEMAKER_PREFIX + suffix


def sagemaker_arn_name(suffix: str = "") -> str:
    """What matches that name in the resource's ARN, which SageMaker writes lower case."""
    return SAGEMAKER_ARN_PREFIX + suffix


def endpoint_name(stage: str) -> dict:
    return _sub(sagemaker_name(f"-{stage}"))


def alarm_names(stage: str) -> dict[str, dict]:
    """{logical id suffix: AlarmName} of the stage's auto-rollback alarms."""
    return {"Invocation5xxAlarm": _sub(f"${{SageMakerProjectName}}-{stage}-invocation-5xx"),
            "ModelLatencyAlarm": _sub(f"${{SageMakerProjectName}}-{stage}-model-latency")}


def _cap(stage: str) -> str:
    return stage.capitalize()


def _settings_state(next_state: str) -> dict:
    """Everything per stage the later states read, computed once (names from the package
    version, numbers as JSON numbers)."""
    settings: dict[str, Any] = {}
    for stage in STAGES:
        cap = _cap(stage)
        settings[stage] = {
            "EndpointName": endpoint_name(stage),
            "ResourceName.$": _sub(
                f"States.Format('{sagemaker_name(f'-{stage}')}-v{{}}', $.package.Version)"),
            "InstanceType": {"Ref": f"{cap}InstanceType"},
            "InstanceCount.$": _json_number(f"{cap}InstanceCount"),
            "CaptureSamplingPercentage.$": _json_number(f"{cap}CaptureSamplingPercentage"),
            "MinCapacity.$": _json_number(f"{cap}MinCapacity"),
            "MaxCapacity.$": _json_number(f"{cap}MaxCapacity"),
            "ScalingResourceId": _sub(
                f"endpoint/{sagemaker_name(f'-{stage}')}/variant/{VARIANT_NAME}"),
        }
    settings["InvocationsPerInstanceTarget.$"] = _json_number("InvocationsPerInstanceTarget")
    settings["TrafficStepPercent.$"] = _json_number("TrafficStepPercent")
    settings["TrafficWaitSeconds.$"] = _json_number("TrafficWaitSeconds")
    settings["BakeSeconds.$"] = _json_number("BakeSeconds")
    settings["ApprovalTimeoutSeconds.$"] = _json_number("ApprovalTimeoutSeconds")
    return {"Type": "Pass", "Parameters": settings, "ResultPath": "$.settings",
            "Next": next_state}


def deployment_config(stage: str) -> dict:
    """Blue/green with canary or linear traffic shifting (the stage's TrafficRouting
    parameter) where the stage's instance count allows it (MIN_INSTANCES_FOR_SHIFTING);
    all at once with baking below; auto-rollback when either of the stage's alarms fires."""
    cap = _cap(stage)
    step = {"Type": "CAPACITY_PERCENT", "Value.$": "$.settings.TrafficStepPercent"}
    wait = "$.settings.TrafficWaitSeconds"
    routing = {"Fn::If": [
        f"{cap}ShiftsAllAtOnce",
        {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds.$": wait},
        {"Fn::If": [
            f"{cap}Canary",
            {"Type": "CANARY", "CanarySize": step, "WaitIntervalInSeconds.$": wait},
            {"Type": "LINEAR", "LinearStepSize": step, "WaitIntervalInSeconds.$": wait}]}]}
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds.$": "$.settings.BakeSeconds",
        },
        "AutoRollbackConfiguration": {
            "Alarms": [{"AlarmName": name} for name in alarm_names(stage).values()]},
    }


def _tags() -> list[dict]:
    return [{"Key": "sagemaker:project-name", "Value": {"Ref": "SageMakerProjectName"}},
            {"Key": "sagemaker:project-id", "Value": {"Ref": "SageMakerProjectId"}}]


def _stage_states(stage: str, after: str) -> dict[str, dict]:
    """The states deploying the approved package to one stage; `after` is where they go
    once the stage serves it (InService on the new config, autoscaling registered)."""
    cap = _cap(stage)
    s = f"$.settings.{stage}"
    here = f"$.{stage}"
    retry_api = RETRY_TRANSIENT
    return {
        f"{cap}Describe": {
            "Type": "Task", "Resource": f"{SAGEMAKER}:describeEndpoint",
            "Parameters": {"EndpointName.$": f"{s}.EndpointName"},
            "ResultSelector": {"Status.$": "$.EndpointStatus",
                               "ConfigName.$": "$.EndpointConfigName"},
            "ResultPath": f"{here}.endpoint",
            "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": f"{here}.missing",
                       "Next": f"{cap}ConfigExists"}],
            "Next": f"{cap}AlreadyServingCheck"},
        f"{cap}AlreadyServingCheck": {
            "Type": "Choice",
            "Choices": [{"Variable": f"{here}.endpoint.ConfigName",
                         "StringEqualsPath": f"{s}.ResourceName",
                         "Next": f"{cap}AlreadyServing"},
                        {"Variable": f"{here}.endpoint.Status", "StringEquals": "Failed",
                         "Next": f"{cap}EndpointFailed"},
                        {"Or": [{"Variable": f"{here}.endpoint.Status", "StringEquals": b}
                                for b in BUSY_STATES],
                         "Next": f"{cap}WaitWhileBusy"}],
            "Default": f"{cap}ConfigExists"},
        f"{cap}AlreadyServing": {
            # Not the end: a version that failed its staging test or the manual approval
            # is approved again to take it on; it goes to the test and the approval again.
            "Type": "Pass", "Next": after,
            "Comment": f"{stage} already serves this version: nothing to deploy here, "
                       "go on from there"},
        f"{cap}EndpointFailed": {
            "Type": "Fail", "Error": "EndpointFailed",
            "Cause": f"the {stage} endpoint is Failed; delete it, then redrive this execution"},
        f"{cap}WaitWhileBusy": {
            "Type": "Wait", "Seconds": POLL_SECONDS, "Next": f"{cap}Describe",
            "Comment": "an update is in flight: deploy after it, never drop the approval"},
        f"{cap}ConfigExists": {
            "Type": "Task", "Resource": f"{SAGEMAKER}:describeEndpointConfig",
            "Parameters": {"EndpointConfigName.$": f"{s}.ResourceName"},
            "ResultPath": None,
            "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": f"{here}.noConfig",
                       "Next": f"{cap}CreateModel"}],
            "Next": f"{cap}CreateOrUpdate"},
        f"{cap}CreateModel": {
            "Type": "Task", "Resource": f"{SAGEMAKER}:createModel",
            "Parameters": {
                "ModelName.$": f"{s}.ResourceName",
                "ExecutionRoleArn": {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]},
                "PrimaryContainer": {"ModelPackageName.$": "$.package.Arn"},
                "Tags": _tags()},
            "ResultPath": None,
            # left over from an earlier, interrupted run: use it (DescribeModel fails if not)
            "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": f"{here}.modelError",
                       "Next": f"{cap}ModelExists"}],
            "Next": f"{cap}CreateEndpointConfig"},
        f"{cap}ModelExists": {
            "Type": "Task", "Resource": f"{SAGEMAKER}:describeModel",
            "Parameters": {"ModelName.$": f"{s}.ResourceName"},
            "ResultPath": None, "Retry": retry_api, "Next": f"{cap}CreateEndpointConfig"},
        f"{cap}CreateEndpointConfig": {
            "Type": "Task", "Resource": f"{SAGEMAKER}:createEndpointConfig",
            "Parameters": {
                "EndpointConfigName.$": f"{s}.ResourceName",
                "ProductionVariants": [{
                    "VariantName": VARIANT_NAME,
                    "ModelName.$": f"{s}.ResourceName",
                    "InstanceType.$": f"{s}.InstanceType",
                    "InitialInstanceCount.$": f"{s}.InstanceCount"}],
                "DataCaptureConfig": {
                    "EnableCapture": True,
                    "InitialSamplingPercentage.$": f"{s}.CaptureSamplingPercentage",
                    "DestinationS3Uri": _sub(f"s3://${{ArtifactBucket}}/datacapture/{stage}"),
                    "KmsKeyId": {"Fn::If": ["HasKmsKey", {"Ref": "KmsKeyArn"},
                                            {"Ref": "AWS::NoValue"}]},
                    "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                    "CaptureContentTypeHeader": {
                        "JsonContentTypes": CAPTURE_JSON_CONTENT_TYPES}},
                "KmsKeyId": {"Fn::If": ["HasKmsKey", {"Ref": "KmsKeyArn"},
                                        {"Ref": "AWS::NoValue"}]},
                "Tags": _tags()},
            "ResultPath": None, "Retry": retry_api, "Next": f"{cap}CreateOrUpdate"},
        f"{cap}CreateOrUpdate": {
            "Type": "Choice",
            "Choices": [{"Variable": f"{here}.endpoint", "IsPresent": True,
                         "Next": f"{cap}UpdateEndpoint"}],
            "Default": f"{cap}CreateEndpoint"},
        f"{cap}CreateEndpoint": {
            "Type": "Task", "Resource": f"{SAGEMAKER}:createEndpoint",
            "Parameters": {"EndpointName.$": f"{s}.EndpointName",
                           "EndpointConfigName.$": f"{s}.ResourceName",
                           "DeploymentConfig": deployment_config(stage),
                           "Tags": _tags()},
            "ResultPath": None, "Retry": retry_api, "Next": f"{cap}WaitForRollout"},
        f"{cap}UpdateEndpoint": {
            "Type": "Task", "Resource": f"{SAGEMAKER}:updateEndpoint",
            "Parameters": {"EndpointName.$": f"{s}.EndpointName",
                           "EndpointConfigName.$": f"{s}.ResourceName",
                           "DeploymentConfig": deployment_config(stage)},
            "ResultPath": None, "Retry": retry_api,
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": f"{here}.updateError",
                       "Next": f"{cap}UpdateRefused"}],
            "Next": f"{cap}WaitForRollout"},
        # Refused: if another update started since our check ("in progress"), the endpoint
        # is busy now and the approval waits for it; otherwise the refusal is permanent.
        f"{cap}UpdateRefused": {
            "Type": "Task", "Resource": f"{SAGEMAKER}:describeEndpoint",
            "Parameters": {"EndpointName.$": f"{s}.EndpointName"},
            "ResultSelector": {"Status.$": "$.EndpointStatus"},
            "ResultPath": f"{here}.afterRefusal", "Retry": retry_api,
            "Next": f"{cap}UpdateRefusedCheck"},
        f"{cap}UpdateRefusedCheck": {
            "Type": "Choice",
            "Choices": [{"Or": [{"Variable": f"{here}.afterRefusal.Status", "StringEquals": b}
                                for b in BUSY_STATES], "Next": f"{cap}WaitWhileBusy"}],
            "Default": f"{cap}UpdateFailed"},
        f"{cap}UpdateFailed": {
            "Type": "Fail", "Error": "UpdateEndpointRefused",
            "CausePath": f"{here}.updateError.Cause",
            "Comment": f"UpdateEndpoint refused {stage} for good (access, validation, a "
                       "missing resource): SageMaker's own message is the cause"},
        f"{cap}WaitForRollout": {"Type": "Wait", "Seconds": POLL_SECONDS,
                                 "Next": f"{cap}RolloutStatus"},
        f"{cap}RolloutStatus": {
            "Type": "Task", "Resource": f"{SAGEMAKER}:describeEndpoint",
            "Parameters": {"EndpointName.$": f"{s}.EndpointName"},
            "ResultSelector": {"Status.$": "$.EndpointStatus",
                               "ConfigName.$": "$.EndpointConfigName"},
            "ResultPath": f"{here}.rollout", "Retry": retry_api,
            "Next": f"{cap}RolloutCheck"},
        f"{cap}RolloutCheck": {
            "Type": "Choice",
            "Choices": [
                {"Or": [{"Variable": f"{here}.rollout.Status", "StringEquals": b}
                        for b in BUSY_STATES], "Next": f"{cap}WaitForRollout"},
                {"And": [{"Variable": f"{here}.rollout.Status", "StringEquals": "InService"},
                         {"Variable": f"{here}.rollout.ConfigName",
                          "StringEqualsPath": f"{s}.ResourceName"}],
                 "Next": f"{cap}RegisterScalableTarget"},
                {"Variable": f"{here}.rollout.Status", "StringEquals": "InService",
                 "Next": f"{cap}RolledBack"}],
            "Default": f"{cap}EndpointFailed"},
        f"{cap}RolledBack": {
            "Type": "Fail", "Error": "DeploymentRolledBack",
            "Cause": f"{stage} is InService on its previous config: an auto-rollback alarm "
                     "fired during traffic shifting (see the endpoint's FailureReason)"},
        f"{cap}RegisterScalableTarget": {
            "Type": "Task", "Resource": f"{AUTOSCALING}:registerScalableTarget",
            "Parameters": {"ServiceNamespace": "sagemaker",
                           "ResourceId.$": f"{s}.ScalingResourceId",
                           "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                           "MinCapacity.$": f"{s}.MinCapacity",
                           "MaxCapacity.$": f"{s}.MaxCapacity"},
            "ResultPath": None, "Retry": retry_api, "Next": f"{cap}PutScalingPolicy"},
        f"{cap}PutScalingPolicy": {
            "Type": "Task", "Resource": f"{AUTOSCALING}:putScalingPolicy",
            "Parameters": {
                "PolicyName": "invocations-per-instance",
                "ServiceNamespace": "sagemaker",
                "ResourceId.$": f"{s}.ScalingResourceId",
                "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                "PolicyType": "TargetTrackingScaling",
                "TargetTrackingScalingPolicyConfiguration": {
                    "TargetValue.$": "$.settings.InvocationsPerInstanceTarget",
                    "PredefinedMetricSpecification": {
                        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}}},
            "ResultPath": None, "Retry": retry_api, "Next": after},
    }


def _if_workflow(then, otherwise=None):
    return {"Fn::If": ["DeployWorkflow", then,
                       {"Ref": "AWS::NoValue"} if otherwise is None else otherwise]}


def _threshold_states(functions: list[tuple[Any, dict]]) -> dict[str, dict]:
    """Once prod serves the version: its own confidence threshold (the registry's
    CustomerMetadataProperties.ConfidenceThreshold) into each Lambda that applies one, so
    the filter means what that version was tuned for. `functions`: (FunctionName, its whole
    Environment.Variables); a version without a threshold leaves them as they are."""
    names = [f"ProdApplyThreshold{n}" for n in range(1, len(functions) + 1)]
    states: dict[str, dict] = {
        STATE_READ_THRESHOLD: {
            "Type": "Task", "Resource": f"{SAGEMAKER}:describeModelPackage",
            "Parameters": {"ModelPackageName.$": "$.package.Arn"},
            # the whole description: a ResultSelector naming CustomerMetadataProperties
            # would fail the execution (States.Runtime) for a version without any
            "ResultPath": "$.promoted", "Retry": RETRY_TRANSIENT,
            "Next": "ProdHasThreshold"},
        "ProdHasThreshold": {
            "Type": "Choice",
            "Choices": [{"Variable": f"$.promoted.CustomerMetadataProperties.{THRESHOLD_PROPERTY}",
                         "IsPresent": True, "Next": names[0]}],
            "Default": STATE_DEPLOYED},
    }
    for n, (name, environment) in enumerate(functions):
        variables = {k: v for k, v in environment.items() if k != "CONFIDENCE_THRESHOLD"}
        variables["CONFIDENCE_THRESHOLD.$"] = f"$.promoted.CustomerMetadataProperties.{THRESHOLD_PROPERTY}"
        states[names[n]] = {
            "Type": "Task", "Resource": f"{LAMBDA}:updateFunctionConfiguration",
            "Parameters": {"FunctionName": name, "Environment": {"Variables": variables}},
            "ResultPath": None, "Retry": RETRY_LAMBDA_UPDATE,
            "Next": names[n + 1] if n + 1 < len(names) else STATE_DEPLOYED}
    return states


def deploy_definition(threshold_functions: list[tuple[Any, dict]] = ()) -> dict:
    """The deploy state machine's ASL. Input: the EventBridge "SageMaker Model Package
    State Change" event, or by hand {"detail": {"ModelPackageArn": "arn:..."}}.
    threshold_functions: see _threshold_states (only with the inference workflow, whose
    Lambdas exist under the template's DeployWorkflow condition)."""
    states: dict[str, dict] = {
        STATE_DESCRIBE_PACKAGE: {
            "Type": "Task", "Resource": f"{SAGEMAKER}:describeModelPackage",
            "Parameters": {"ModelPackageName.$": "$.detail.ModelPackageArn"},
            "ResultSelector": {"Arn.$": "$.ModelPackageArn",
                               "Version.$": "$.ModelPackageVersion",
                               "Status.$": "$.ModelApprovalStatus"},
            "ResultPath": "$.package",
            "Retry": RETRY_TRANSIENT,
            "Next": "ApprovalCheck"},
        # events can arrive late or twice: act on the package's state now, not the event's
        "ApprovalCheck": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.package.Status", "StringEquals": "Approved",
                         "Next": "Settings"}],
            "Default": "NotApproved"},
        "NotApproved": {"Type": "Succeed",
                        "Comment": "no longer Approved (rejected since): nothing to deploy"},
        "Settings": _settings_state("StagingDescribe"),
    }
    states.update(_stage_states("staging", STATE_STAGING_TEST))
    states[STATE_STAGING_TEST] = {
        "Type": "Task", "Resource": "arn:aws:states:::codebuild:startBuild.sync",
        "Comment": "runs the staging test (StagingTestCommand) in the project's code",
        "Parameters": {
            "ProjectName": {"Ref": "StagingTestProject"},
            "EnvironmentVariablesOverride": [
                {"Name": "STAGE", "Value": "staging", "Type": "PLAINTEXT"},
                {"Name": "ENDPOINT_NAME", "Value.$": "$.settings.staging.EndpointName",
                 "Type": "PLAINTEXT"},
                {"Name": "MODEL_PACKAGE_ARN", "Value.$": "$.package.Arn",
                 "Type": "PLAINTEXT"}]},
        "ResultPath": None,
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.testError",
                   "Next": "StagingTestFailed"}],
        "Next": STATE_MANUAL_APPROVAL}
    states["StagingTestFailed"] = {
        "Type": "Fail", "Error": "StagingTestFailed",
        "Cause": "the staging test build failed: this version is not promoted (see the "
                 "CodeBuild log); staging keeps serving it until the next approval"}
    states[STATE_MANUAL_APPROVAL] = {
        "Type": "Task", "Resource": "arn:aws:states:::sns:publish.waitForTaskToken",
        "Parameters": {
            "TopicArn": {"Ref": "NotificationTopic"},
            "Subject": _sub("${SageMakerProjectName}: promote to prod?"),
            "Message": {
                "what": "A model version passed its staging test and waits for promotion",
                "modelPackageArn.$": "$.package.Arn",
                "stagingEndpoint.$": "$.settings.staging.EndpointName",
                "taskToken.$": "$$.Task.Token",
                "approve": "aws stepfunctions send-task-success --task-output '{}' "
                           "--task-token <taskToken>",
                "reject": "aws stepfunctions send-task-failure --error Rejected "
                          "--task-token <taskToken>"}},
        "TimeoutSecondsPath": "$.settings.ApprovalTimeoutSeconds",
        "ResultPath": None,
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.approvalError",
                   "Next": "PromotionRefused"}],
        "Next": "ProdDescribe"}
    states["PromotionRefused"] = {
        "Type": "Fail", "Error": "PromotionRefused",
        "Cause": "rejected, or not approved before ApprovalTimeoutSeconds: prod unchanged"}
    after_prod = (_if_workflow(STATE_READ_THRESHOLD, STATE_DEPLOYED) if threshold_functions
                  else STATE_DEPLOYED)
    states.update(_stage_states("prod", after_prod))
    if threshold_functions:
        states.update({name: _if_workflow(state)
                       for name, state in _threshold_states(list(threshold_functions)).items()})
    states[STATE_DEPLOYED] = {"Type": "Succeed"}
    return {"Comment": "Approved model package -> staging -> test -> manual approval -> prod "
                       "(blue/green, canary or linear, alarm auto-rollback)",
            "StartAt": STATE_DESCRIBE_PACKAGE, "States": states}
