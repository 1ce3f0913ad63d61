"""The project's AWS infrastructure as one CloudFormation template, generated from the same
definitions the local default runs: the Lambda table (workflow.definition.lambda_functions),
the state machine's ASL from the Step Functions SDK (workflow_definition_json), and the
approval Lambda (lambdas/deploy_approved_model.py).

What it creates: the three workflow Lambdas and the approval -> deploy Lambda (code from
S3), the inference state machine, the bulk state machine (workflow/bulk.py) with its three
Lambdas, an EventBridge rule from "model package Approved" to the
deploy Lambda, an EventBridge rule from "new object under <bucket>/<prefix>" to the state
machine (input shaped like the seeds' events), and IAM roles whose statements name actions
and resources exactly: no "*" action, resources scoped to this project's bucket, functions,
log groups, state machine, endpoint and model package group.

The committed copy, infra/workflow-stack.json, is this generator's output for the shared
settings (configs/base.yaml); tests keep the two identical.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from scones.backend import LAMBDA_RUNTIME, backend_for
from scones.config import DATA_CAPTURE_PREFIX, Config
from workflow.bulk import RESULTS_PREFIX, bulk_definition_json, bulk_state_machine_name
from workflow.definition import lambda_functions, workflow_definition_json

TEMPLATE_PATH = Path(__file__).with_name("workflow-stack.json")
DEPLOY_FUNCTION_KEY = "deploy_approved_model"
LOG_RETENTION_DAYS = 30
ARN = "arn:${AWS::Partition}"
REGION_ACCOUNT = "${AWS::Region}:${AWS::AccountId}"

def _sub(text: str) -> dict:
    return {"Fn::Sub": text}


def _logical_id(key: str, suffix: str) -> str:
    return "".join(part.capitalize() for part in key.split("_")) + suffix


def _assume_role(service: str) -> dict:
    statement = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    if service == "states.amazonaws.com":
        # Step Functions documents this confused-deputy guard for its roles; a role cannot be
        # passed to another account's Lambda or rule anyway, so those trust the service only.
        statement["Condition"] = {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    return {"Version": "2012-10-17", "Statement": [statement]}


def _role(service: str, policy_name: str, statements: list[dict], description: str) -> dict:
    return {"Type": "AWS::IAM::Role",
            "Properties": {"Description": description,
                           "AssumeRolePolicyDocument": _assume_role(service),
                           "Policies": [{"PolicyName": policy_name,
                                         "PolicyDocument": {"Version": "2012-10-17",
                                                            "Statement": statements}}]}}


def _log_statement(log_group_ids: list[str]) -> dict:
    return {"Sid": "WriteOwnLogs", "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [{"Fn::GetAtt": [i, "Arn"]} for i in log_group_ids]}


def cloudformation_template(config: Config) -> dict:
    """The whole stack as a CloudFormation template dict (JSON-ready)."""
    functions = lambda_functions(config)
    workflow_functions = [f for f in functions.values() if f.in_workflow]
    bulk_functions = [f for f in functions.values() if f.in_bulk]
    prefix = config.workflow.lambda_prefix
    endpoint = config.workflow.endpoint_name.lower()  # SageMaker ARNs are lower case
    group = config.pipeline.model_package_group.lower()
    endpoint_arn = _sub(f"{ARN}:sagemaker:{REGION_ACCOUNT}:endpoint/{endpoint}")
    fn_id = {f.key: _logical_id(f.key, "Function") for f in functions.values()}
    log_id = {f.key: _logical_id(f.key, "LogGroup") for f in functions.values()}

    parameters = {
        "BucketName": {
            "Type": "String",
            "Description": "The project's S3 bucket: new images arrive under IncomingPrefix, "
                           f"data capture goes to {DATA_CAPTURE_PREFIX}/",
            "AllowedPattern": "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
            # A local config's bucket is no real bucket: no default then.
            **({"Default": bucket} if (bucket := backend_for(config).real_bucket) else {})},
        "CodeBucket": {
            "Type": "String", "Default": "",
            "Description": "Bucket holding the Lambda zips (`scones lambdas build`); "
                           "empty: BucketName"},
        "CodeKeyPrefix": {
            "Type": "String", "Default": "lambdas/",
            "Description": "Key prefix of the zips, <prefix><function key>.zip. Use a new "
                           "prefix (e.g. lambdas/<git sha>/) to roll out new code: "
                           "CloudFormation updates a function only when its S3 key changes"},
        "SageMakerExecutionRoleArn": {
            "Type": "String",
            "Description": "Role the deployed SageMaker models run as (aws.role_arn); it must "
                           "be able to write data capture to the bucket",
            "AllowedPattern": r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$"},
        "IncomingPrefix": {
            "Type": "String", "Default": "incoming/",
            "Description": "New objects under this key prefix start the inference workflow"},
    }
    resources: dict[str, dict] = {}
    for function in functions.values():
        resources[log_id[function.key]] = {
            "Type": "AWS::Logs::LogGroup",
            "DeletionPolicy": "Delete", "UpdateReplacePolicy": "Delete",
            "Properties": {"LogGroupName": f"/aws/lambda/{function.name}",
                           "RetentionInDays": LOG_RETENTION_DAYS}}

    resources["WorkflowLambdaRole"] = _role(
        "lambda.amazonaws.com", f"{prefix}-workflow-lambdas", [
            _log_statement([log_id[f.key] for f in workflow_functions]),
            {"Sid": "ReadImages", "Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": _sub(f"{ARN}:s3:::${{BucketName}}/*")},
            {"Sid": "InvokeEndpoint", "Effect": "Allow", "Action": ["sagemaker:InvokeEndpoint"],
             "Resource": endpoint_arn},
        ], "The inference workflow's Lambdas: read images, invoke the endpoint, log")
    bulk_results = _sub(f"{ARN}:s3:::${{BucketName}}/{RESULTS_PREFIX}/*")
    resources["BulkLambdaRole"] = _role(
        "lambda.amazonaws.com", f"{prefix}-bulk-lambdas", [
            _log_statement([log_id[f.key] for f in bulk_functions]),
            {"Sid": "ListImages", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": _sub(f"{ARN}:s3:::${{BucketName}}")},
            {"Sid": "ReadImagesAndResults", "Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": _sub(f"{ARN}:s3:::${{BucketName}}/*")},
            {"Sid": "WriteRunResults", "Effect": "Allow", "Action": ["s3:PutObject"],
             "Resource": bulk_results},
            {"Sid": "InvokeEndpoint", "Effect": "Allow", "Action": ["sagemaker:InvokeEndpoint"],
             "Resource": endpoint_arn},
        ], "The bulk workflow's Lambdas: list and read images, write run results, invoke "
           "the endpoint, log")
    resources["DeployLambdaRole"] = _role(
        "lambda.amazonaws.com", f"{prefix}-deploy-approved-model", [
            _log_statement([log_id[DEPLOY_FUNCTION_KEY]]),
            {"Sid": "ReadApprovedPackages", "Effect": "Allow",
             "Action": ["sagemaker:DescribeModelPackage"],
             "Resource": _sub(f"{ARN}:sagemaker:{REGION_ACCOUNT}:model-package/{group}/*")},
            {"Sid": "CreateModelAndConfig", "Effect": "Allow",
             "Action": ["sagemaker:CreateModel", "sagemaker:CreateEndpointConfig"],
             "Resource": [
                 _sub(f"{ARN}:sagemaker:{REGION_ACCOUNT}:model/{endpoint}-*"),
                 _sub(f"{ARN}:sagemaker:{REGION_ACCOUNT}:endpoint-config/{endpoint}-*"),
                 _sub(f"{ARN}:sagemaker:{REGION_ACCOUNT}:model-package/{group}/*")]},
            {"Sid": "CreateOrUpdateEndpoint", "Effect": "Allow",
             "Action": ["sagemaker:DescribeEndpoint", "sagemaker:CreateEndpoint",
                        "sagemaker:UpdateEndpoint"],
             "Resource": [endpoint_arn, _sub(
                 f"{ARN}:sagemaker:{REGION_ACCOUNT}:endpoint-config/{endpoint}-*")]},
            {"Sid": "PassModelRole", "Effect": "Allow", "Action": ["iam:PassRole"],
             "Resource": {"Ref": "SageMakerExecutionRoleArn"},
             "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}},
        ], "The approval Lambda: turn an approved model package into the endpoint's model")

    for function in functions.values():
        environment = dict(function.environment)
        role = "BulkLambdaRole" if function.in_bulk else "WorkflowLambdaRole"
        if function.key == DEPLOY_FUNCTION_KEY:
            role = "DeployLambdaRole"
            environment.update(
                EXECUTION_ROLE_ARN={"Ref": "SageMakerExecutionRoleArn"},
                DATA_CAPTURE_S3_URI=_sub(f"s3://${{BucketName}}/{DATA_CAPTURE_PREFIX}"))
        resources[fn_id[function.key]] = {
            "Type": "AWS::Lambda::Function",
            "DependsOn": [log_id[function.key]],  # our log group (retention), not Lambda's
            "Properties": {
                "FunctionName": function.name,
                "Description": function.description,
                "Runtime": LAMBDA_RUNTIME,
                "Handler": function.handler,
                "Role": {"Fn::GetAtt": [role, "Arn"]},
                "Code": {"S3Bucket": {"Fn::If": ["CodeInProjectBucket", {"Ref": "BucketName"},
                                                 {"Ref": "CodeBucket"}]},
                         "S3Key": _sub(f"${{CodeKeyPrefix}}{function.key}.zip")},
                "Timeout": function.timeout,
                "MemorySize": function.memory_size,
                "Environment": {"Variables": environment},
            }}

    invoke_targets = []
    for function in workflow_functions:
        invoke_targets += [{"Fn::GetAtt": [fn_id[function.key], "Arn"]},
                           _sub(f"${{{fn_id[function.key]}.Arn}}:*")]
    resources["StateMachineRole"] = _role(
        "states.amazonaws.com", f"{prefix}-inference-state-machine", [
            {"Sid": "InvokeWorkflowLambdas", "Effect": "Allow",
             "Action": ["lambda:InvokeFunction"], "Resource": invoke_targets},
        ], "The inference state machine: invoke the workflow's three Lambdas")
    resources["InferenceStateMachine"] = {
        "Type": "AWS::StepFunctions::StateMachine",
        "Properties": {
            "StateMachineName": config.workflow.state_machine_name,
            "StateMachineType": "STANDARD",
            "RoleArn": {"Fn::GetAtt": ["StateMachineRole", "Arn"]},
            # exactly the SDK's ASL, the one the local engine runs
            "DefinitionString": workflow_definition_json(config),
        }}

    bulk_name = bulk_state_machine_name(config)
    bulk_targets = []
    for function in bulk_functions:
        bulk_targets += [{"Fn::GetAtt": [fn_id[function.key], "Arn"]},
                         _sub(f"${{{fn_id[function.key]}.Arn}}:*")]
    resources["BulkStateMachineRole"] = _role(
        "states.amazonaws.com", f"{prefix}-bulk-state-machine", [
            {"Sid": "InvokeBulkLambdas", "Effect": "Allow",
             "Action": ["lambda:InvokeFunction"], "Resource": bulk_targets},
            # A Distributed Map runs its children as executions of this same state machine.
            {"Sid": "RunChildExecutions", "Effect": "Allow", "Action": ["states:StartExecution"],
             "Resource": _sub(f"{ARN}:states:{REGION_ACCOUNT}:stateMachine:{bulk_name}")},
            {"Sid": "ManageChildExecutions", "Effect": "Allow",
             "Action": ["states:DescribeExecution", "states:StopExecution"],
             "Resource": _sub(f"{ARN}:states:{REGION_ACCOUNT}:execution:{bulk_name}/*")},
            # ItemReader reads the manifest; ResultWriter writes the Map's result files.
            {"Sid": "ReadManifestWriteResults", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:ListMultipartUploadParts",
                        "s3:AbortMultipartUpload"],
             "Resource": bulk_results},
        ], "The bulk state machine: invoke its Lambdas, run its Distributed Map's children, "
           "read its manifest and write its results")
    resources["BulkStateMachine"] = {
        "Type": "AWS::StepFunctions::StateMachine",
        "Properties": {
            "StateMachineName": bulk_name,
            "StateMachineType": "STANDARD",   # the parent; its Map's children are EXPRESS
            "RoleArn": {"Fn::GetAtt": ["BulkStateMachineRole", "Arn"]},
            "DefinitionString": bulk_definition_json(config),
        }}

    resources["ModelApprovedRule"] = {
        "Type": "AWS::Events::Rule",
        "Properties": {
            "Name": f"{prefix}-model-approved",
            "Description": "An approved model version of our group -> deploy it",
            "State": "ENABLED",
            "EventPattern": {
                "source": ["aws.sagemaker"],
                "detail-type": ["SageMaker Model Package State Change"],
                "detail": {"ModelPackageGroupName": [config.pipeline.model_package_group],
                           "ModelApprovalStatus": ["Approved"]}},
            "Targets": [{"Id": "deploy-approved-model",
                         "Arn": {"Fn::GetAtt": [fn_id[DEPLOY_FUNCTION_KEY], "Arn"]}}]}}
    resources["ModelApprovedInvokePermission"] = {
        "Type": "AWS::Lambda::Permission",
        "Properties": {"Action": "lambda:InvokeFunction",
                       "FunctionName": {"Ref": fn_id[DEPLOY_FUNCTION_KEY]},
                       "Principal": "events.amazonaws.com",
                       "SourceArn": {"Fn::GetAtt": ["ModelApprovedRule", "Arn"]}}}

    resources["NewImageEventsRole"] = _role(
        "events.amazonaws.com", f"{prefix}-start-inference", [
            {"Sid": "StartInference", "Effect": "Allow", "Action": ["states:StartExecution"],
             "Resource": {"Ref": "InferenceStateMachine"}},
        ], "EventBridge: start the inference workflow for new images")
    resources["NewImageRule"] = {
        "Type": "AWS::Events::Rule",
        "Properties": {
            "Name": f"{prefix}-new-image",
            "Description": "A new object under the incoming prefix -> classify it",
            "State": "ENABLED",
            "EventPattern": {
                "source": ["aws.s3"],
                "detail-type": ["Object Created"],
                "detail": {"bucket": {"name": [{"Ref": "BucketName"}]},
                           "object": {"key": [{"prefix": {"Ref": "IncomingPrefix"}}]}}},
            "Targets": [{
                "Id": "inference-workflow",
                "Arn": {"Ref": "InferenceStateMachine"},
                "RoleArn": {"Fn::GetAtt": ["NewImageEventsRole", "Arn"]},
                "InputTransformer": {
                    "InputPathsMap": {"bucket": "$.detail.bucket.name",
                                      "key": "$.detail.object.key"},
                    # the seeds' event shape; unquoted placeholders become JSON strings
                    "InputTemplate": '{"s3_bucket": <bucket>, "s3_key": <key>, '
                                     '"image_data": "", "inferences": []}'}}]}}

    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"{config.project}: delivery-vehicle classifier ({' vs '.join(config.classes)}) "
                       "- inference workflow, approval -> deploy, new-image trigger. "
                       "Generated by `scones infra template`; do not edit by hand.",
        "Parameters": parameters,
        "Conditions": {"CodeInProjectBucket": {"Fn::Equals": [{"Ref": "CodeBucket"}, ""]}},
        "Resources": resources,
        "Outputs": {
            "StateMachineArn": {"Description": "The inference workflow",
                                "Value": {"Ref": "InferenceStateMachine"}},
            "WorkflowLambdaRoleArn": {"Description": "aws.lambda_role_arn for `scones workflow "
                                                     "deploy`",
                                      "Value": {"Fn::GetAtt": ["WorkflowLambdaRole", "Arn"]}},
            "StateMachineRoleArn": {"Description": "aws.states_role_arn",
                                    "Value": {"Fn::GetAtt": ["StateMachineRole", "Arn"]}},
            "BulkStateMachineArn": {"Description": "The bulk workflow (`scones workflow run "
                                                   "--env aws --prefix ...`)",
                                    "Value": {"Ref": "BulkStateMachine"}},
            "DeployFunctionArn": {"Description": "Runs on each approval",
                                  "Value": {"Fn::GetAtt": [fn_id[DEPLOY_FUNCTION_KEY], "Arn"]}},
            "EnableBucketEvents": {
                "Description": "The new-image rule needs the bucket's EventBridge "
                               "notifications on; run this once",
                "Value": _sub("aws s3api put-bucket-notification-configuration --bucket "
                              "${BucketName} --notification-configuration "
                              "'{\"EventBridgeConfiguration\": {}}'")},
        },
    }


def template_json(config: Config) -> str:
    return json.dumps(cloudformation_template(config), indent=2) + "\n"


def iam_statements(template: dict) -> list[tuple[str, dict]]:
    """(role logical id, statement) for every inline policy statement of every role."""
    found = []
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::IAM::Role":
            for policy in resource["Properties"].get("Policies", []):
                found += [(name, s) for s in policy["PolicyDocument"]["Statement"]]
    return found


def wildcard_actions(template: dict) -> list[str]:
    """Every IAM action containing '*' (none is the rule), as '<role>: <action>'."""
    bad = []
    for role, statement in iam_statements(template):
        actions = statement.get("Action", [])
        for action in [actions] if isinstance(actions, str) else actions:
            if "*" in action:
                bad.append(f"{role}: {action}")
    return bad


def unscoped_resources(template: dict) -> list[str]:
    """Every statement resource that is '*' or an ARN whose resource part is a wildcard
    (e.g. arn:...:sagemaker:region:account:*), as '<role>: <resource>'."""
    bad = []
    for role, statement in iam_statements(template):
        resources = statement.get("Resource", [])
        for resource in resources if isinstance(resources, list) else [resources]:
            text = resource.get("Fn::Sub", "") if isinstance(resource, dict) else resource
            if not isinstance(text, str):
                continue  # a Ref/GetAtt: one named resource of this stack or a parameter
            # ${AWS::Region} etc. hold colons of their own: name them before splitting
            parts = re.sub(r"\$\{AWS::(\w+)\}", r"<\1>", text).split(":", 5)
            if text == "*" or (text.startswith("arn:") and (
                    len(parts) < 6 or parts[5] in ("", "*") or parts[5].startswith("*"))):
                bad.append(f"{role}: {text}")
    return bad
