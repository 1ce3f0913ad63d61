"""Deploy the inference workflow to AWS: its Lambda functions and its state machine.

Idempotent: functions and the state machine are looked up by name; code is uploaded only
when the zip's CodeSha256 differs from the deployed one (the zips are deterministic), the
configuration only when a field differs, the definition only when it changed. A second
run with nothing changed changes nothing. Clients are passed in (boto3 from the CLI,
moto in tests).
"""
from __future__ import annotations

import json
from pathlib import Path

from botocore.exceptions import ClientError, WaiterError

from lambdas.build import code_sha256
from scones.backend import LAMBDA_RUNTIME
from scones.config import Config
from scones.errors import SconesError
from workflow.definition import LambdaFunction, lambda_functions, workflow_definition_json



class WorkflowDeployError(SconesError):
    """Something in the configuration or on AWS prevents the deployment."""


def _required_role(config: Config, key: str, what: str) -> str:
    value = getattr(config.aws, key)
    if not value:
        raise WorkflowDeployError(
            f"aws.{key} is not set: the ARN of the IAM role {what}; set it in configs/aws.yaml "
            f"or with --set aws.{key}=arn:aws:iam::<account>:role/<name> (`scones infra "
            f"template` describes one)")
    if not value.startswith("arn:"):
        raise WorkflowDeployError(f"aws.{key} must be an IAM role ARN, got {value!r}")
    return value


def _aws_call(what: str, call, **kwargs):
    try:
        return call(**kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise WorkflowDeployError(f"{what}: AWS answered {error.get('Code')}: "
                                  f"{error.get('Message', exc)}") from None


def _wait(lambda_client, waiter: str, name: str) -> None:
    """Lambda refuses a second update while one is in progress: wait for it to settle."""
    try:
        lambda_client.get_waiter(waiter).wait(FunctionName=name,
                                              WaiterConfig={"Delay": 2, "MaxAttempts": 90})
    except WaiterError as exc:
        raise WorkflowDeployError(f"Lambda function {name} did not become ready: {exc}") from None


def _wanted_configuration(function: LambdaFunction, role: str) -> dict:
    return {
        "Runtime": LAMBDA_RUNTIME,
        "Role": role,
        "Handler": function.handler,
        "Description": function.description,
        "Timeout": function.timeout,
        "MemorySize": function.memory_size,
        "Environment": {"Variables": function.environment},
    }


def _configuration_changes(current: dict, wanted: dict) -> list[str]:
    changed = []
    for key, value in wanted.items():
        have = current.get(key)
        if key == "Environment":
            have = {"Variables": (have or {}).get("Variables", {})}
        if have != value:
            changed.append(key)
    return changed


def deploy_function(function: LambdaFunction, zip_path: Path, role: str, lambda_client) -> dict:
    """Create or update one function; {"name", "arn", "action", "changes", "code_sha256"}."""
    zip_bytes = Path(zip_path).read_bytes()
    sha = code_sha256(zip_path)
    wanted = _wanted_configuration(function, role)
    try:
        current = lambda_client.get_function(FunctionName=function.name)["Configuration"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise WorkflowDeployError(f"looking up Lambda function {function.name}: "
                                      f"{exc.response['Error'].get('Message', exc)}") from None
        current = None
    if current is None:
        created = _aws_call(f"creating Lambda function {function.name}",
                            lambda_client.create_function, FunctionName=function.name,
                            Code={"ZipFile": zip_bytes}, Publish=False, **wanted)
        _wait(lambda_client, "function_active_v2", function.name)
        return {"name": function.name, "arn": created["FunctionArn"], "action": "created",
                "changes": [], "code_sha256": sha}
    changes = []
    if current.get("CodeSha256") != sha:
        _aws_call(f"updating the code of Lambda function {function.name}",
                  lambda_client.update_function_code, FunctionName=function.name,
                  ZipFile=zip_bytes)
        _wait(lambda_client, "function_updated_v2", function.name)
        changes.append("Code")
    config_changes = _configuration_changes(current, wanted)
    if config_changes:
        _aws_call(f"updating the configuration of Lambda function {function.name}",
                  lambda_client.update_function_configuration, FunctionName=function.name,
                  **wanted)
        _wait(lambda_client, "function_updated_v2", function.name)
        changes += config_changes
    return {"name": function.name, "arn": current["FunctionArn"],
            "action": "updated" if changes else "unchanged", "changes": changes,
            "code_sha256": sha}


def _find_state_machine(sfn_client, name: str) -> str | None:
    try:
        for page in sfn_client.get_paginator("list_state_machines").paginate():
            for machine in page["stateMachines"]:
                if machine["name"] == name:
                    return machine["stateMachineArn"]
    except ClientError as exc:
        raise WorkflowDeployError(f"listing state machines: "
                                  f"{exc.response['Error'].get('Message', exc)}") from None
    return None


def deploy_state_machine(config: Config, sfn_client) -> dict:
    """Create or update the state machine from the SDK's definition;
    {"name", "arn", "action", "changes"}."""
    role = _required_role(config, "states_role_arn", "the state machine assumes")
    name = config.workflow.state_machine_name
    definition = workflow_definition_json(config)
    arn = _find_state_machine(sfn_client, name)
    if arn is None:
        created = _aws_call(f"creating state machine {name}", sfn_client.create_state_machine,
                            name=name, definition=definition, roleArn=role, type="STANDARD")
        return {"name": name, "arn": created["stateMachineArn"], "action": "created",
                "changes": []}
    current = _aws_call(f"describing state machine {name}", sfn_client.describe_state_machine,
                        stateMachineArn=arn)
    changes = []
    if json.loads(current["definition"]) != json.loads(definition):
        changes.append("definition")
    if current.get("roleArn") != role:
        changes.append("roleArn")
    if changes:
        _aws_call(f"updating state machine {name}", sfn_client.update_state_machine,
                  stateMachineArn=arn, definition=definition, roleArn=role)
    return {"name": name, "arn": arn, "action": "updated" if changes else "unchanged",
            "changes": changes}


def deploy_workflow(config: Config, zips: dict[str, Path], lambda_client, sfn_client) -> dict:
    """Deploy every function of the table (workflow.definition.lambda_functions) from
    `zips` ({key: zip path}, from lambdas.build.build_lambda_zips), then the state machine.

    Returns {"functions": {key: {...}}, "state_machine": {...}, "not_deployed": [keys of
    zips with no entry in the table]}.
    """
    lambda_role = _required_role(config, "lambda_role_arn", "the workflow's Lambdas run as")
    _required_role(config, "states_role_arn", "the state machine assumes")
    functions = lambda_functions(config)
    missing = [key for key in functions if key not in zips]
    if missing:
        raise WorkflowDeployError(f"no zip for Lambda function(s) {', '.join(missing)} "
                                  f"(build them with lambdas.build.build_lambda_zips)")
    results = {key: deploy_function(function, zips[key], lambda_role, lambda_client)
               for key, function in functions.items()}
    return {"functions": results,
            "state_machine": deploy_state_machine(config, sfn_client),
            "not_deployed": sorted(set(zips) - set(functions))}
