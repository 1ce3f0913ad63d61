"""Deploy a model version to the endpoint when it is approved in the Model Registry.

Triggered by the EventBridge rule on "SageMaker Model Package State Change" events for our
model package group. `deploy_model_package` is the whole deployment as a pure function of a
sagemaker client: the Lambda passes boto3's, and `scones endpoint deploy` / `scones registry
approve` pass a local control plane with the same methods, so one piece of logic deploys
both on AWS and on the embedded default. An approval deploys to the staging endpoint
(ENDPOINT_NAME); `scones endpoint promote` takes a tested version on to prod.

Durable and idempotent: a package the endpoint already serves is a no-op (SageMaker can send
several events per change); a busy endpoint raises the retryable EndpointBusy before
anything is created (asynchronous invocation: Lambda's retries, then its on-failure
destination; from an SQS queue: a batch item failure, retried after the visibility timeout,
dead-lettered after maxReceiveCount); a late event never rolls the endpoint back.

boto3 and the standard library only: this file is shipped to Lambda on its own.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)

EVENT_SOURCE = "aws.sagemaker"
EVENT_DETAIL_TYPE = "SageMaker Model Package State Change"
VARIANT_NAME = "AllTraffic"
# The classifier answers JSON; listing it makes data capture store the output as plain
# JSON text (encoding "JSON") instead of base64, so monitoring can read it directly.
CAPTURE_JSON_CONTENT_TYPES = ["application/json"]
# Endpoint states in which SageMaker refuses UpdateEndpoint: the deployment must wait.
BUSY_ENDPOINT_STATES = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting",
                        "UpdateRollbackFailed")
MAX_NAME_LENGTH = 63  # SageMaker model / endpoint-config names


class DeploymentError(Exception):
    """Base of this Lambda's errors; the class name is what the invocation reports."""


class InvalidSettings(DeploymentError):
    """An environment variable is missing or malformed; the message names it."""


class InvalidEvent(DeploymentError):
    """The event is not a model package state change we can read."""


class ModelPackageNotFound(DeploymentError):
    """DescribeModelPackage does not know the package."""


class ModelPackageNotApproved(DeploymentError):
    """Only Approved model packages are deployed."""


class EndpointBusy(DeploymentError):
    """The endpoint is mid-change; SageMaker refuses updates until it settles (retryable)."""


class OlderThanServing(DeploymentError):
    """An event for a version older than the one serving: not a rollback path."""


class EndpointFailed(DeploymentError):
    """The endpoint is in the Failed state and cannot be updated; delete it first."""


@dataclass(frozen=True)
class DeploySettings:
    endpoint_name: str
    execution_role_arn: str
    model_package_group: str
    data_capture_s3_uri: str
    capture_sampling_percentage: int = 100
    instance_type: str = "ml.m5.large"
    initial_instance_count: int = 1
    # Deployment guardrails for an update (UpdateEndpoint's DeploymentConfig): blue/green
    # with CANARY / LINEAR / ALL_AT_ONCE traffic shifting, auto-rollback when one of these
    # CloudWatch alarms fires; none configured: a plain update.
    rollback_alarms: tuple[str, ...] = ()
    traffic_routing: str = "CANARY"
    traffic_step_percent: int = 10
    traffic_wait_seconds: int = 300
    bake_seconds: int = 600

    def __post_init__(self) -> None:
        checks = (
            ("ENDPOINT_NAME", self.endpoint_name, bool(_NAME_RE.match(self.endpoint_name or ""))),
            ("EXECUTION_ROLE_ARN", self.execution_role_arn,
             (self.execution_role_arn or "").startswith("arn:")),
            ("MODEL_PACKAGE_GROUP", self.model_package_group, bool(self.model_package_group)),
            ("DATA_CAPTURE_S3_URI", self.data_capture_s3_uri,
             re.match(r"^s3://[^/]+", self.data_capture_s3_uri or "") is not None),
            ("CAPTURE_SAMPLING_PERCENTAGE", self.capture_sampling_percentage,
             isinstance(self.capture_sampling_percentage, int)
             and 0 <= self.capture_sampling_percentage <= 100),
            ("INSTANCE_TYPE", self.instance_type, (self.instance_type or "").startswith("ml.")),
            ("TRAFFIC_ROUTING", self.traffic_routing,
             self.traffic_routing in ("CANARY", "LINEAR", "ALL_AT_ONCE")),
            ("TRAFFIC_STEP_PERCENT", self.traffic_step_percent,
             isinstance(self.traffic_step_percent, int) and 1 <= self.traffic_step_percent <= 100),
        )
        for variable, value, ok in checks:
            if not ok:
                raise InvalidSettings(f"{variable}={value!r} is not valid: "
                                      f"{_SETTING_HELP[variable]}")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "DeploySettings":
        """The one place this Lambda reads its environment."""
        missing = [name for name in _REQUIRED_VARIABLES if not environ.get(name)]
        if missing:
            raise InvalidSettings(f"missing environment variable(s) {', '.join(missing)}")
        sampling = environ.get("CAPTURE_SAMPLING_PERCENTAGE", "100")
        try:
            sampling_value = int(sampling)
        except ValueError:
            raise InvalidSettings(f"CAPTURE_SAMPLING_PERCENTAGE={sampling!r} is not valid: "
                                  f"{_SETTING_HELP['CAPTURE_SAMPLING_PERCENTAGE']}") from None
        return cls(
            endpoint_name=environ["ENDPOINT_NAME"],
            execution_role_arn=environ["EXECUTION_ROLE_ARN"],
            model_package_group=environ["MODEL_PACKAGE_GROUP"],
            data_capture_s3_uri=environ["DATA_CAPTURE_S3_URI"].rstrip("/"),
            capture_sampling_percentage=sampling_value,
            instance_type=environ.get("INSTANCE_TYPE") or "ml.m5.large",
            rollback_alarms=tuple(a.strip() for a in environ.get("ROLLBACK_ALARMS", "").split(",")
                                  if a.strip()),
            traffic_routing=environ.get("TRAFFIC_ROUTING") or "CANARY",
            traffic_step_percent=_int_setting(environ, "TRAFFIC_STEP_PERCENT", 10),
            traffic_wait_seconds=_int_setting(environ, "TRAFFIC_WAIT_SECONDS", 300),
            bake_seconds=_int_setting(environ, "BAKE_SECONDS", 600),
        )


def _int_setting(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name) or str(default)
    try:
        return int(text)
    except ValueError:
        raise InvalidSettings(f"{name}={text!r} is not valid: an integer") from None


_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_REQUIRED_VARIABLES = ("ENDPOINT_NAME", "EXECUTION_ROLE_ARN", "MODEL_PACKAGE_GROUP",
                       "DATA_CAPTURE_S3_URI")
_SETTING_HELP = {
    "ENDPOINT_NAME": "a SageMaker endpoint name (letters, digits, hyphens; at most 63)",
    "EXECUTION_ROLE_ARN": "the IAM role ARN the SageMaker model runs as",
    "MODEL_PACKAGE_GROUP": "the model package group whose approvals are deployed",
    "DATA_CAPTURE_S3_URI": "an s3://bucket/prefix URL for data capture",
    "CAPTURE_SAMPLING_PERCENTAGE": "an integer from 0 to 100",
    "INSTANCE_TYPE": "a SageMaker instance type such as ml.m5.large",
    "TRAFFIC_ROUTING": "CANARY, LINEAR or ALL_AT_ONCE",
    "TRAFFIC_STEP_PERCENT": "an integer from 1 to 100 (the canary size / linear step)",
}


def approved_package_arn(event: Mapping[str, Any], model_package_group: str) -> tuple[str | None, str]:
    """(package ARN, reason) for an event that asks for a deployment, (None, reason) otherwise."""
    if not isinstance(event, Mapping):
        raise InvalidEvent(f"expected an EventBridge event object, got {type(event).__name__}")
    if event.get("source") != EVENT_SOURCE or event.get("detail-type") != EVENT_DETAIL_TYPE:
        return None, (f"not a model package state change (source={event.get('source')!r}, "
                      f"detail-type={event.get('detail-type')!r})")
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        raise InvalidEvent("the event has no 'detail' object")
    group = detail.get("ModelPackageGroupName")
    status = detail.get("ModelApprovalStatus")
    if group != model_package_group:
        return None, f"model package group {group!r} is not ours ({model_package_group!r})"
    if status != "Approved":
        return None, f"approval status is {status!r}, not 'Approved'"
    arn = detail.get("ModelPackageArn")
    if not isinstance(arn, str) or not arn.startswith("arn:"):
        raise InvalidEvent(f"the event's detail.ModelPackageArn is missing or not an ARN: {arn!r}")
    return arn, "approved"


def deploy_model_package(client: Any, settings: DeploySettings, package_arn: str,
                         now: datetime | None = None, newer_only: bool = False) -> dict:
    """Create a model and an endpoint config (with data capture) for an approved package,
    then create the endpoint or point it at the new config. Returns what was done.

    Idempotent: an endpoint already serving (or rolling out) this package is left alone
    (Action "none"): SageMaker can emit several events for one change. A busy endpoint
    raises EndpointBusy before anything is created, so a retry starts clean. newer_only
    (events): a package older than the one the endpoint serves is not deployed - a late or
    retried event must not roll the endpoint back; a rollback is deployed by hand.
    """
    package = _describe_package(client, package_arn)
    status = package.get("ModelApprovalStatus")
    if status != "Approved":
        raise ModelPackageNotApproved(
            f"model package {package_arn} is {status}, not Approved: approve it first")
    if package.get("ModelPackageGroupName") not in (None, settings.model_package_group):
        raise ModelPackageNotApproved(
            f"model package {package_arn} belongs to group "
            f"{package['ModelPackageGroupName']!r}, not {settings.model_package_group!r}")
    version = package.get("ModelPackageVersion")
    current = _describe_endpoint_or_none(client, settings.endpoint_name)
    if current is not None:
        endpoint_status = current.get("EndpointStatus")
        serving = serving_package_arn(client, current)
        if serving == package_arn and endpoint_status != "Failed":
            return {"Action": "none", "Reason": f"endpoint {settings.endpoint_name} already "
                    f"serves version {version} ({endpoint_status})",
                    "EndpointName": settings.endpoint_name,
                    "EndpointArn": current.get("EndpointArn"),
                    "EndpointConfigName": current.get("EndpointConfigName"),
                    "ModelPackageArn": package_arn, "ModelPackageVersion": version,
                    "PreviousEndpointConfigName": None,
                    "DataCaptureConfig": data_capture_config(settings)}
        if endpoint_status in BUSY_ENDPOINT_STATES:
            raise EndpointBusy(f"endpoint {settings.endpoint_name} is {endpoint_status}; "
                               f"version {version} is deployed once it is InService (retry)")
        if endpoint_status == "Failed":
            raise EndpointFailed(f"endpoint {settings.endpoint_name} is Failed "
                                 f"({current.get('FailureReason', 'no reason given')}); "
                                 "delete it, then deploy again")
        serving_version = _version_of(serving)
        if (newer_only and serving_version is not None and isinstance(version, int)
                and _group_of(serving) == _group_of(package_arn) and serving_version > version):
            raise OlderThanServing(
                f"endpoint {settings.endpoint_name} serves version {serving_version}, newer "
                f"than {version}: not rolled back by an event (deploy {version} by hand)")
    resource_name = _resource_name(settings.endpoint_name, version, now)

    client.create_model(
        ModelName=resource_name,
        Containers=[{"ModelPackageName": package_arn}],
        ExecutionRoleArn=settings.execution_role_arn,
    )
    client.create_endpoint_config(
        EndpointConfigName=resource_name,
        ProductionVariants=[{
            "VariantName": VARIANT_NAME,
            "ModelName": resource_name,
            "InitialInstanceCount": settings.initial_instance_count,
            "InstanceType": settings.instance_type,
            "InitialVariantWeight": 1.0,
        }],
        DataCaptureConfig=data_capture_config(settings),
    )
    if current is None:
        response = client.create_endpoint(EndpointName=settings.endpoint_name,
                                          EndpointConfigName=resource_name)
        action, previous_config = "created", None
    else:
        guardrails = deployment_config(settings)
        response = client.update_endpoint(EndpointName=settings.endpoint_name,
                                          EndpointConfigName=resource_name,
                                          **({"DeploymentConfig": guardrails} if guardrails
                                             else {}))
        action, previous_config = "updated", current.get("EndpointConfigName")
    return {
        "Action": action,
        "EndpointName": settings.endpoint_name,
        "EndpointArn": response.get("EndpointArn"),
        "EndpointConfigName": resource_name,
        "ModelName": resource_name,
        "ModelPackageArn": package_arn,
        "ModelPackageVersion": version,
        "PreviousEndpointConfigName": previous_config,
        "DataCaptureConfig": data_capture_config(settings),
    }


def serving_package_arn(client: Any, endpoint: Mapping[str, Any]) -> str | None:
    """The model package the endpoint's current config serves (DescribeEndpointConfig ->
    DescribeModel), None when it cannot be told because the config or model is gone.

    Any other refusal (AccessDenied above all) is raised, not read as "unknown": that
    would silently turn off the "already serving" and "never roll back" checks."""
    try:
        endpoint_config = client.describe_endpoint_config(
            EndpointConfigName=endpoint["EndpointConfigName"])
        model = client.describe_model(
            ModelName=endpoint_config["ProductionVariants"][0]["ModelName"])
    except Exception as exc:
        parts = _client_error_parts(exc)
        # SageMaker answers a missing config or model with a ValidationException
        if parts and parts[0] == "ValidationException" and "Could not find" in parts[1]:
            return None
        raise
    containers = model.get("Containers") or [model.get("PrimaryContainer") or {}]
    return containers[0].get("ModelPackageName")


def _version_of(package_arn: str | None) -> int | None:
    tail = (package_arn or "").rpartition("/")[2]
    return int(tail) if tail.isdigit() else None


def _group_of(package_arn: str | None) -> str:
    return (package_arn or "").rpartition("/")[0]


def deployment_config(settings: DeploySettings) -> dict | None:
    """UpdateEndpoint's DeploymentConfig: blue/green traffic shifting watched by the
    rollback alarms (SageMaker rolls back to the old fleet when one fires, and only then
    terminates it after bake_seconds). None without alarms: nothing would watch the shift."""
    if not settings.rollback_alarms:
        return None
    step = {"Type": "CAPACITY_PERCENT", "Value": settings.traffic_step_percent}
    routing: dict[str, Any] = {"Type": settings.traffic_routing}
    if settings.traffic_routing == "CANARY":
        routing.update(CanarySize=step, WaitIntervalInSeconds=settings.traffic_wait_seconds)
    elif settings.traffic_routing == "LINEAR":
        routing.update(LinearStepSize=step, WaitIntervalInSeconds=settings.traffic_wait_seconds)
    return {
        "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing,
                                  "TerminationWaitInSeconds": settings.bake_seconds},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": name}
                                                 for name in settings.rollback_alarms]},
    }


def data_capture_config(settings: DeploySettings) -> dict:
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": settings.capture_sampling_percentage,
        "DestinationS3Uri": settings.data_capture_s3_uri,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": list(CAPTURE_JSON_CONTENT_TYPES)},
    }


def _resource_name(endpoint_name: str, version: Any, now: datetime | None) -> str:
    """<endpoint>-v<version>-<UTC timestamp to the millisecond>: unique per deployment, so a
    redeploy of the same version (a rollback) never collides with the earlier one."""
    now = now or datetime.now(timezone.utc)
    suffix = f"-v{version}-{now.strftime('%Y%m%d%H%M%S')}{now.microsecond // 1000:03d}"
    return endpoint_name[:MAX_NAME_LENGTH - len(suffix)].rstrip("-") + suffix


def _client_error_parts(exc: Exception) -> tuple[str, str] | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return None
    error = response.get("Error", {})
    return error.get("Code", ""), error.get("Message", "")


def _describe_package(client: Any, package_arn: str) -> dict:
    try:
        return client.describe_model_package(ModelPackageName=package_arn)
    except Exception as exc:
        parts = _client_error_parts(exc)
        if parts and parts[0] in ("ValidationException", "ResourceNotFound"):
            raise ModelPackageNotFound(f"model package {package_arn}: {parts[1]}") from exc
        raise


def _describe_endpoint_or_none(client: Any, endpoint_name: str) -> dict | None:
    try:
        return client.describe_endpoint(EndpointName=endpoint_name)
    except Exception as exc:
        parts = _client_error_parts(exc)
        # SageMaker answers a missing endpoint with a ValidationException, not a 404 code.
        if parts and parts[0] == "ValidationException" and "Could not find endpoint" in parts[1]:
            return None
        raise


_sagemaker_client = None


def lambda_handler(event, context):
    """An EventBridge event (the rule invokes the function asynchronously), or a batch of
    them from an SQS queue between the rule and the function (event source mapping with
    ReportBatchItemFailures).

    EndpointBusy is retryable and is raised (asynchronous invocation: Lambda retries, then
    its on-failure destination holds the event) or reported as a batch item failure (SQS:
    the message comes back after its visibility timeout and goes to the dead-letter queue
    after maxReceiveCount): an approval made during an update is deployed after it, never
    dropped."""
    settings = DeploySettings.from_environ(os.environ)
    if isinstance(event, Mapping) and isinstance(event.get("Records"), list):
        failures = []
        for record in event["Records"]:
            try:
                handle_event(json.loads(record.get("body") or "null"), settings)
            except EndpointBusy as exc:
                logger.warning("message %s: %s", record.get("messageId"), exc)
                failures.append({"itemIdentifier": record.get("messageId")})
        return {"batchItemFailures": failures}
    return handle_event(event, settings)


def handle_event(event, settings: DeploySettings) -> dict:
    package_arn, reason = approved_package_arn(event, settings.model_package_group)
    if package_arn is None:
        logger.info("ignored event %s: %s", event.get("id"), reason)
        return {"status": "ignored", "reason": reason}
    global _sagemaker_client
    if _sagemaker_client is None:  # one client per container, not per invocation
        import boto3
        _sagemaker_client = boto3.client("sagemaker")
    try:
        result = deploy_model_package(_sagemaker_client, settings, package_arn,
                                      newer_only=True)
    except (ModelPackageNotApproved, OlderThanServing) as exc:
        # The package changed again (e.g. rejected) between the event and this call, or a
        # newer one serves: the registry's and endpoint's current state win, and retrying
        # would not change them.
        logger.warning("ignored event %s: %s", event.get("id"), exc)
        return {"status": "ignored", "reason": str(exc)}
    if result["Action"] == "none":
        logger.info("event %s: %s", event.get("id"), result["Reason"])
        return {"status": "unchanged", **result}
    logger.info("deployment %s", json.dumps(result, default=str))
    return {"status": "deployed", **result}
