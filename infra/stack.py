"""Create or update the SageMaker Project stack with CloudFormation: the one path by which
this project's AWS resources are made (`scones infra deploy`, `scones workflow deploy`).

    package (infra.package) -> upload the bundle to S3 -> CreateStack or UpdateStack from
    the template's S3 URL (it is larger than the 51,200 bytes a request body takes) ->
    wait for CREATE_COMPLETE / UPDATE_COMPLETE -> the stack's outputs

An update names the parameters the bundle sets and keeps every other one at the value
the stack has (UsePreviousValue), so a NotificationEmail or instance count set in the
console survives a redeploy. "No updates are to be performed" is an unchanged stack, not
an error.
"""
from __future__ import annotations

from pathlib import Path

from botocore.exceptions import ClientError, WaiterError

from infra.package import Package, package, upload
from scones.config import Config
from scones.errors import SconesError

CAPABILITIES = ["CAPABILITY_IAM"]
_WAIT = {"Delay": 15, "MaxAttempts": 240}  # up to an hour: endpoints are not in the stack


class StackDeployError(SconesError):
    """CloudFormation refused the stack or the stack did not reach a complete state."""


def _error(exc: ClientError) -> tuple[str, str]:
    error = exc.response.get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", exc))


def _existing_stack(cloudformation, name: str) -> dict | None:
    try:
        return cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as exc:
        code, message = _error(exc)
        if code == "ValidationError" and "does not exist" in message:
            return None
        raise StackDeployError(f"looking up stack {name}: {message}") from None


def _failure_reason(cloudformation, name: str) -> str:
    """The first resource event that failed, which is what a person needs to read."""
    try:
        events = cloudformation.describe_stack_events(StackName=name)["StackEvents"]
    except ClientError:
        return ""
    failed = [e for e in events if e.get("ResourceStatus", "").endswith("_FAILED")]
    if not failed:
        return ""
    last = failed[-1]
    return f"{last.get('LogicalResourceId')}: {last.get('ResourceStatusReason', '')}"


def deploy_stack(config: Config, cloudformation, s3, *, stack_name: str, out_dir: Path | str,
                 project_name: str | None = None, project_id: str | None = None,
                 bucket: str | None = None, with_source: bool = True,
                 wait: bool = True) -> dict:
    """Package, upload, create or update the stack; {"stack", "action", "status",
    "template_url", "outputs"}. An existing stack's SageMakerProjectName/Id are kept
    unless given; creating one needs project_id."""
    current = _existing_stack(cloudformation, stack_name)
    previous = {p["ParameterKey"]: p.get("ParameterValue", "")
                for p in (current or {}).get("Parameters", [])}
    project_name = project_name or previous.get("SageMakerProjectName") or config.project
    project_id = project_id or previous.get("SageMakerProjectId")
    if not project_id:
        raise StackDeployError(f"stack {stack_name} does not exist yet: creating it needs "
                               "--project-id (SageMakerProjectId; Studio's project id, or "
                               "any short lower-case id of your choice)")
    bundle: Package = package(config, out_dir, bucket=bucket, with_source=with_source,
                              project_name=project_name, project_id=project_id)
    try:
        upload(bundle, s3)
    except ClientError as exc:
        raise StackDeployError(f"uploading the bundle to s3://{bundle.bucket}/: "
                               f"{_error(exc)[1]}") from None
    given = [{"ParameterKey": k, "ParameterValue": v} for k, v in bundle.parameters.items()]
    request = {"StackName": stack_name, "TemplateURL": bundle.template_url,
               "Capabilities": CAPABILITIES}
    if current is None or current["StackStatus"] == "REVIEW_IN_PROGRESS":
        action, waiter = "created", "stack_create_complete"
        try:
            cloudformation.create_stack(**request, Parameters=given,
                                        Tags=[{"Key": "sagemaker:project-name",
                                               "Value": project_name}])
        except ClientError as exc:
            raise StackDeployError(f"creating stack {stack_name}: {_error(exc)[1]}") from None
    else:
        action, waiter = "updated", "stack_update_complete"
        kept = [{"ParameterKey": p["ParameterKey"], "UsePreviousValue": True}
                for p in current.get("Parameters", [])
                if p["ParameterKey"] not in bundle.parameters]
        try:
            cloudformation.update_stack(**request, Parameters=given + kept)
        except ClientError as exc:
            code, message = _error(exc)
            if code == "ValidationError" and "No updates are to be performed" in message:
                return {"stack": stack_name, "action": "unchanged",
                        "status": current["StackStatus"], "template_url": bundle.template_url,
                        "outputs": _outputs(current)}
            raise StackDeployError(f"updating stack {stack_name}: {message}") from None
    if wait:
        try:
            cloudformation.get_waiter(waiter).wait(StackName=stack_name, WaiterConfig=_WAIT)
        except WaiterError as exc:
            reason = _failure_reason(cloudformation, stack_name)
            stacks = (exc.last_response or {}).get("Stacks") or [{}]
            status = stacks[0].get("StackStatus", str(exc))
            raise StackDeployError(f"stack {stack_name} was not {action}: {status}"
                                   + (f" ({reason})" if reason else "")) from None
    final = _existing_stack(cloudformation, stack_name) or {}
    return {"stack": stack_name, "action": action, "status": final.get("StackStatus", ""),
            "template_url": bundle.template_url, "outputs": _outputs(final)}


def _outputs(stack: dict) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
