"""Put an approved model version on the endpoint, locally or on AWS, with one piece of logic.

The deployment itself is `lambdas.deploy_approved_model.deploy_model_package(client, ...)`,
the function the approval Lambda runs on AWS. Here `client` is the backend's SageMaker
control plane: boto3's sagemaker client on AWS, `scones.control_plane.
LocalSageMakerControlPlane` on the embedded default (which keeps the endpoint as a state
file that the local endpoint server watches and serves from).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from lambdas import deploy_approved_model as deploy_logic
from scones.backend import Backend, backend_for
from scones.config import Config
from scones.errors import SconesError

NOT_DEPLOYED = "NotDeployed"


class DeploymentError(SconesError):
    """A deployment that cannot be done: unapproved version, busy or failed endpoint..."""


def deploy_settings(config: Config) -> deploy_logic.DeploySettings:
    """The approval Lambda's settings, taken from the project configuration instead of env."""
    try:
        return deploy_logic.DeploySettings(
            endpoint_name=config.workflow.endpoint_name,
            execution_role_arn=config.aws.role_arn or "",
            model_package_group=config.pipeline.model_package_group,
            data_capture_s3_uri=config.data_capture_uri,
            capture_sampling_percentage=config.monitoring.capture_sampling_percentage,
            instance_type=config.pipeline.inference_instance_type,
        )
    except deploy_logic.InvalidSettings as exc:
        raise DeploymentError(f"configuration cannot be deployed: {exc}") from None


def deploy_lambda_environment(config: Config) -> dict[str, str]:
    """The approval Lambda's environment for this configuration (its variables are read in
    lambdas/deploy_approved_model.DeploySettings.from_environ). The CloudFormation template
    replaces the role and the capture URI with its parameters."""
    settings = deploy_settings(config)
    return {
        "ENDPOINT_NAME": settings.endpoint_name,
        "EXECUTION_ROLE_ARN": settings.execution_role_arn,
        "MODEL_PACKAGE_GROUP": settings.model_package_group,
        "DATA_CAPTURE_S3_URI": settings.data_capture_s3_uri,
        "CAPTURE_SAMPLING_PERCENTAGE": str(settings.capture_sampling_percentage),
        "INSTANCE_TYPE": settings.instance_type,
    }


def deploy_model_package(config: Config, version: int | str,
                         backend: Backend | None = None) -> dict:
    """Deploy registered version `version` to config.workflow.endpoint_name.

    Only Approved versions deploy; deploying an older approved version is the rollback.
    Returns the Lambda's result (Action created|updated, names, ModelPackageVersion...).
    """
    backend = backend or backend_for(config)
    client = backend.sagemaker()
    package = backend.registry().describe(version)
    status = package.get("ModelApprovalStatus")
    if status != "Approved":
        raise DeploymentError(
            f"version {package.get('ModelPackageVersion', version)} of "
            f"{config.pipeline.model_package_group} is {status}: only Approved versions are "
            f"deployed (approve it with `scones registry approve {version}`)")
    try:
        return deploy_logic.deploy_model_package(client, deploy_settings(config),
                                                 package["ModelPackageArn"])
    except deploy_logic.DeploymentError as exc:
        raise DeploymentError(f"deploying version {version}: {exc}") from exc
    except Exception as exc:
        if _error_code(exc) is None:
            raise
        raise DeploymentError(f"deploying version {version} to endpoint "
                              f"{config.workflow.endpoint_name}: {exc}") from exc


def approve_and_deploy(config: Config, version: int | str, description: str | None = None
                       ) -> tuple[dict, bool, dict | None]:
    """Approve a registered version; locally also deploy it, as the EventBridge rule and the
    deploy_approved_model Lambda do on AWS. Returns (package, changed, deployment or None)."""
    backend = backend_for(config)
    package, changed = backend.registry().approve(version, description)
    deployment = None
    # On AWS the EventBridge rule hands the approval to the deploy Lambda; locally there is
    # no event bus, so the approval deploys here.
    if changed and backend.pick(local=True, aws=False):
        deployment = deploy_model_package(config, package["ModelPackageVersion"], backend)
    return package, changed, deployment


def endpoint_status(config: Config, backend: Backend | None = None) -> dict:
    """{"EndpointName", "ModelPackageVersion", "EndpointStatus", ...}: what the endpoint
    serves now, through the SageMaker API (DescribeEndpoint -> its config -> its model ->
    the model package) of the backend's control plane. EndpointStatus is "NotDeployed" when
    there is no endpoint."""
    backend = backend or backend_for(config)
    name = config.workflow.endpoint_name
    client = backend.sagemaker()
    try:
        endpoint = client.describe_endpoint(EndpointName=name)
    except Exception as exc:
        code, message = _error_code(exc) or (None, "")
        if code == "ValidationException" and "Could not find endpoint" in message:
            return {"EndpointName": name, "ModelPackageVersion": None,
                    "EndpointStatus": NOT_DEPLOYED}
        if code is None:
            raise
        raise DeploymentError(f"cannot describe endpoint {name}: {exc}") from exc
    result = {
        "EndpointName": name,
        "ModelPackageVersion": None,
        "EndpointStatus": endpoint.get("EndpointStatus"),
        "EndpointArn": endpoint.get("EndpointArn"),
        "EndpointConfigName": endpoint.get("EndpointConfigName"),
        "LastModifiedTime": _iso(endpoint.get("LastModifiedTime")),
        "DataCaptureConfig": endpoint.get("DataCaptureConfig"),
    }
    # The local control plane's extras (what file is served, earlier deployments).
    result.update({k: endpoint[k] for k in ("LocalModelData", "History", "StateFile")
                   if k in endpoint})
    try:
        endpoint_config = client.describe_endpoint_config(
            EndpointConfigName=endpoint["EndpointConfigName"])
        model_name = endpoint_config["ProductionVariants"][0]["ModelName"]
        model = client.describe_model(ModelName=model_name)
        containers = model.get("Containers") or [model.get("PrimaryContainer") or {}]
        package_arn = containers[0].get("ModelPackageName")
        result.update(ModelName=model_name, ModelPackageArn=package_arn)
        if package_arn:
            package = client.describe_model_package(ModelPackageName=package_arn)
            result["ModelPackageVersion"] = package.get("ModelPackageVersion")
    except Exception as exc:
        if _error_code(exc) is None:
            raise
        # The endpoint exists but its config or model was deleted or made outside this
        # project: report what is known rather than failing the whole status.
        result["detail"] = f"model package unknown: {exc}"
    return result


def _error_code(exc: Exception) -> tuple[str, str] | None:
    """(code, message) of a botocore ClientError, None for any other exception."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return None
    error = exc.response.get("Error", {})
    return error.get("Code", ""), error.get("Message", "")


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
