"""Put an approved model version on the endpoint, locally or on AWS, with one piece of logic.

The deployment itself is `lambdas.deploy_approved_model.deploy_model_package(client, ...)`,
the function the approval Lambda runs on AWS. Here it gets either boto3's sagemaker client
(env aws) or `LocalSageMakerControlPlane`, which implements exactly the calls that function
makes and keeps the endpoint as a state file, <workspace>/endpoints/<endpoint>.json, that
the local endpoint server (workflow/endpoint.py) watches and serves from.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from lambdas import deploy_approved_model as deploy_logic
from pipelines.config import Config
from pipelines.errors import RegistryError, SconesError

ENDPOINTS_DIR = "endpoints"
HISTORY_LIMIT = 50  # previous deployments kept in the state file, newest last
NOT_DEPLOYED = "NotDeployed"


class DeploymentError(SconesError):
    """A deployment that cannot be done: unapproved version, busy or failed endpoint..."""


def endpoint_state_path(config: Config, endpoint_name: str | None = None) -> Path:
    name = endpoint_name or config.workflow.endpoint_name
    return Path(config.workspace) / ENDPOINTS_DIR / f"{name}.json"


def read_endpoint_state(config: Config, endpoint_name: str | None = None) -> dict | None:
    """The local endpoint's state file as a dict, None when nothing is deployed."""
    path = endpoint_state_path(config, endpoint_name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise DeploymentError(f"endpoint state file {path} is not valid JSON ({exc}); "
                              "deploy again with `scones endpoint deploy --version N`") from None
    if not isinstance(state, dict):
        raise DeploymentError(f"endpoint state file {path} does not hold a JSON object")
    return state


def default_data_capture_uri(config: Config) -> str:
    return f"s3://{config.aws.bucket}/datacapture"


def deploy_settings(config: Config) -> deploy_logic.DeploySettings:
    """The approval Lambda's settings, taken from the project configuration instead of env."""
    try:
        return deploy_logic.DeploySettings(
            endpoint_name=config.workflow.endpoint_name,
            execution_role_arn=config.aws.role_arn or "",
            model_package_group=config.pipeline.model_package_group,
            data_capture_s3_uri=default_data_capture_uri(config),
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


def deploy_model_package(config: Config, version: int | str, sagemaker_client=None) -> dict:
    """Deploy registered version `version` to config.workflow.endpoint_name.

    Only Approved versions deploy; deploying an older approved version is the rollback.
    Returns the Lambda's result (Action created|updated, names, ModelPackageVersion...).
    """
    from pipelines.registry import open_registry

    if config.is_local and sagemaker_client is None:
        client = LocalSageMakerControlPlane(config)
        registry = client.registry
    else:
        client = sagemaker_client or _boto3_sagemaker(config)
        registry = open_registry(config, sagemaker_client=client)
    package = registry.describe(version)
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
    from pipelines.registry import open_registry

    package, changed = open_registry(config).approve(version, description)
    deployment = None
    if changed and config.is_local:
        deployment = deploy_model_package(config, package["ModelPackageVersion"])
    return package, changed, deployment


def endpoint_status(config: Config, sagemaker_client=None) -> dict:
    """{"EndpointName", "ModelPackageVersion", "status", ...}: what the endpoint serves now.

    Locally from the state file; on AWS from DescribeEndpoint -> its config -> its model ->
    the model package. "status" is "NotDeployed" when there is no endpoint.
    """
    name = config.workflow.endpoint_name
    if config.is_local and sagemaker_client is None:
        state = read_endpoint_state(config)
        if state is None:
            return {"EndpointName": name, "ModelPackageVersion": None, "status": NOT_DEPLOYED}
        return {
            "EndpointName": name,
            "ModelPackageVersion": state.get("ModelPackageVersion"),
            "status": state.get("EndpointStatus"),
            "ModelPackageArn": state.get("ModelPackageArn"),
            "EndpointConfigName": state.get("EndpointConfigName"),
            "ModelName": state.get("ModelName"),
            "ModelDataUrl": state.get("ModelDataUrl"),
            "LocalModelData": state.get("LocalModelData"),
            "LastModifiedTime": state.get("LastModifiedTime"),
            "DataCaptureConfig": state.get("DataCaptureConfig"),
            "History": state.get("History", []),
            "StateFile": str(endpoint_state_path(config)),
        }
    client = sagemaker_client or _boto3_sagemaker(config)
    try:
        endpoint = client.describe_endpoint(EndpointName=name)
    except Exception as exc:
        code, message = _error_code(exc) or (None, "")
        if code == "ValidationException" and "Could not find endpoint" in message:
            return {"EndpointName": name, "ModelPackageVersion": None, "status": NOT_DEPLOYED}
        if code is None:
            raise
        raise DeploymentError(f"cannot describe endpoint {name}: {exc}") from exc
    result = {
        "EndpointName": name,
        "ModelPackageVersion": None,
        "status": endpoint.get("EndpointStatus"),
        "EndpointArn": endpoint.get("EndpointArn"),
        "EndpointConfigName": endpoint.get("EndpointConfigName"),
        "LastModifiedTime": _iso(endpoint.get("LastModifiedTime")),
        "DataCaptureConfig": endpoint.get("DataCaptureConfig"),
    }
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


def _boto3_sagemaker(config: Config):
    import boto3

    return boto3.client("sagemaker", region_name=config.aws.region)


def _error_code(exc: Exception) -> tuple[str, str] | None:
    """(code, message) of a botocore ClientError, None for any other exception."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return None
    error = exc.response.get("Error", {})
    return error.get("Code", ""), error.get("Message", "")


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _client_error(operation: str, message: str, code: str = "ValidationException"):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": 400}}, operation)


class LocalSageMakerControlPlane:
    """The subset of boto3's sagemaker client that deploy_model_package calls, on the
    embedded default: packages come from the LocalRegistry, models and endpoint configs live
    in this object (only this deployment needs them), and the endpoint is the state file the
    local server reads. Errors are botocore ClientErrors shaped like SageMaker's."""

    def __init__(self, config: Config, registry=None):
        from pipelines.registry import account_of, open_registry

        if not config.is_local:
            raise SconesError("the local control plane serves the local environment only")
        self.config = config
        self.registry = registry or open_registry(config)
        self.region = config.aws.region
        self.account = account_of(config.aws.role_arn)
        self.endpoints_dir = Path(config.workspace) / ENDPOINTS_DIR
        self._models: dict[str, dict] = {}
        self._endpoint_configs: dict[str, dict] = {}

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:{kind}/{name.lower()}"

    # -- model packages ------------------------------------------------------------------
    def describe_model_package(self, *, ModelPackageName: str) -> dict:
        # Accepts what SageMaker accepts for a versioned package: its ARN.
        group, _, version = ModelPackageName.rpartition(":model-package/")[2].rpartition("/")
        if not version.isdigit():
            raise _client_error("DescribeModelPackage",
                                f"Model package {ModelPackageName} not found")
        try:
            package = self.registry.describe(int(version))
        except RegistryError as exc:
            raise _client_error("DescribeModelPackage",
                                f"Model package {ModelPackageName} not found: {exc}") from None
        if package["ModelPackageArn"] != ModelPackageName:
            raise _client_error("DescribeModelPackage",
                                f"Model package {ModelPackageName} not found (group {group})")
        return package

    # -- models and endpoint configs -----------------------------------------------------
    def create_model(self, *, ModelName: str, ExecutionRoleArn: str,
                     Containers: list | None = None, PrimaryContainer: dict | None = None,
                     **_ignored: Any) -> dict:
        if ModelName in self._models:
            raise _client_error("CreateModel", "Cannot create already existing model "
                                f'"{self._arn("model", ModelName)}".')
        containers = Containers or ([PrimaryContainer] if PrimaryContainer else [])
        if len(containers) != 1 or not containers[0].get("ModelPackageName"):
            raise _client_error("CreateModel", "the local control plane deploys exactly one "
                                "container given by ModelPackageName")
        package = self.describe_model_package(ModelPackageName=containers[0]["ModelPackageName"])
        self._models[ModelName] = {"ModelName": ModelName, "ExecutionRoleArn": ExecutionRoleArn,
                                   "Containers": containers, "Package": package}
        return {"ModelArn": self._arn("model", ModelName)}

    def create_endpoint_config(self, *, EndpointConfigName: str, ProductionVariants: list,
                               DataCaptureConfig: dict | None = None, **_ignored: Any) -> dict:
        if EndpointConfigName in self._endpoint_configs:
            raise _client_error("CreateEndpointConfig", "Cannot create already existing "
                                f'endpoint configuration "{EndpointConfigName}".')
        if len(ProductionVariants) != 1:
            raise _client_error("CreateEndpointConfig",
                                "the local endpoint serves exactly one production variant")
        model_name = ProductionVariants[0].get("ModelName")
        if model_name not in self._models:
            raise _client_error("CreateEndpointConfig", "Could not find model "
                                f'"{self._arn("model", str(model_name))}".')
        self._endpoint_configs[EndpointConfigName] = {
            "EndpointConfigName": EndpointConfigName,
            "ProductionVariants": ProductionVariants,
            "DataCaptureConfig": DataCaptureConfig or {"EnableCapture": False},
        }
        return {"EndpointConfigArn": self._arn("endpoint-config", EndpointConfigName)}

    # -- endpoints -----------------------------------------------------------------------
    def describe_endpoint(self, *, EndpointName: str) -> dict:
        state = read_endpoint_state(self.config, EndpointName)
        if state is None:
            raise _client_error("DescribeEndpoint", f'Could not find endpoint "{EndpointName}".')
        capture = state.get("DataCaptureConfig") or {}
        return {
            "EndpointName": EndpointName,
            "EndpointArn": state.get("EndpointArn", self._arn("endpoint", EndpointName)),
            "EndpointConfigName": state.get("EndpointConfigName"),
            "EndpointStatus": state.get("EndpointStatus"),
            "CreationTime": _parse_time(state.get("CreationTime")),
            "LastModifiedTime": _parse_time(state.get("LastModifiedTime")),
            "ProductionVariants": [{"VariantName": deploy_logic.VARIANT_NAME,
                                    "CurrentInstanceCount": 1, "CurrentWeight": 1.0}],
            "DataCaptureConfig": {
                "EnableCapture": capture.get("EnableCapture", False),
                "CaptureStatus": "Started" if capture.get("EnableCapture") else "Stopped",
                "CurrentSamplingPercentage": capture.get("InitialSamplingPercentage"),
                "DestinationS3Uri": capture.get("DestinationS3Uri"),
            },
        }

    def create_endpoint(self, *, EndpointName: str, EndpointConfigName: str,
                        **_ignored: Any) -> dict:
        with self._locked(EndpointName):
            if read_endpoint_state(self.config, EndpointName) is not None:
                raise _client_error("CreateEndpoint", "Cannot create already existing endpoint "
                                    f'"{self._arn("endpoint", EndpointName)}".')
            state = self._state_for(EndpointName, EndpointConfigName, previous=None)
            self._write_state(EndpointName, state)
        return {"EndpointArn": state["EndpointArn"]}

    def update_endpoint(self, *, EndpointName: str, EndpointConfigName: str,
                        **_ignored: Any) -> dict:
        with self._locked(EndpointName):
            previous = read_endpoint_state(self.config, EndpointName)
            if previous is None:
                raise _client_error("UpdateEndpoint", "Could not find endpoint "
                                    f'"{self._arn("endpoint", EndpointName)}".')
            state = self._state_for(EndpointName, EndpointConfigName, previous=previous)
            self._write_state(EndpointName, state)
        return {"EndpointArn": state["EndpointArn"]}

    def _state_for(self, endpoint_name: str, config_name: str, previous: dict | None) -> dict:
        endpoint_config = self._endpoint_configs.get(config_name)
        if endpoint_config is None:
            raise _client_error("CreateEndpoint", "Could not find endpoint configuration "
                                f'"{self._arn("endpoint-config", config_name)}".')
        model_name = endpoint_config["ProductionVariants"][0]["ModelName"]
        package = self._models[model_name]["Package"]
        local_model_data = package.get("LocalModelData")
        # On AWS an endpoint whose model data is gone ends up Failed; locally we refuse
        # up front, so the server is never pointed at a missing file.
        if not local_model_data or not Path(local_model_data).is_file():
            raise _client_error("CreateEndpoint", f"model data of version "
                                f"{package['ModelPackageVersion']} is missing: "
                                f"{local_model_data} ({package.get('ModelDataUrl')})")
        capture = dict(endpoint_config["DataCaptureConfig"])
        capture.setdefault("DestinationS3Uri", default_data_capture_uri(self.config))
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        history = list((previous or {}).get("History", []))
        if previous:
            history.append({key: previous.get(key) for key in (
                "ModelPackageVersion", "ModelPackageArn", "EndpointConfigName", "ModelName",
                "LastModifiedTime")})
        return {
            "EndpointName": endpoint_name,
            "EndpointArn": self._arn("endpoint", endpoint_name),
            "EndpointConfigName": config_name,
            "EndpointStatus": "InService",
            "ModelName": model_name,
            "ModelPackageVersion": package["ModelPackageVersion"],
            "ModelPackageArn": package["ModelPackageArn"],
            "ModelDataUrl": package.get("ModelDataUrl"),
            "LocalModelData": str(Path(local_model_data).resolve()),
            "DataCaptureConfig": capture,
            "CreationTime": (previous or {}).get("CreationTime", now),
            "LastModifiedTime": now,
            "History": history[-HISTORY_LIMIT:],
        }

    @contextlib.contextmanager
    def _locked(self, endpoint_name: str) -> Iterator[None]:
        """Serialise read-modify-write of one endpoint's state across processes, so two
        concurrent deployments cannot drop each other's History entry."""
        self.endpoints_dir.mkdir(parents=True, exist_ok=True)
        with open(self.endpoints_dir / f".{endpoint_name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write_state(self, endpoint_name: str, state: dict) -> None:
        path = endpoint_state_path(self.config, endpoint_name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path)  # atomic: the server never reads half a deployment


def _parse_time(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value
