"""The SageMaker control plane of the embedded default.

`LocalSageMakerControlPlane` implements exactly the subset of boto3's `sagemaker` client that
a deployment calls (lambdas/deploy_approved_model.deploy_model_package, the same function the
approval Lambda runs on AWS): model packages come from the local registry, models and
endpoint configs live in this object, and an endpoint is its state file
(scones.local.deployment_state), which the local endpoint server watches and serves from. Errors are
botocore ClientErrors shaped like SageMaker's, so the deployment logic cannot tell the two
apart.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lambdas.deploy_approved_model import VARIANT_NAME
from scones.config import Config
from scones.local.deployment_state import BakeRecord, EndpointStateFile
from scones.local.endpoint.capture import read_capture_drops
from scones.errors import RegistryError
from scones.workspace import Workspace


def _client_error(operation: str, message: str, code: str = "ValidationException"):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": 400}}, operation)


class LocalSageMakerControlPlane:
    """The subset of boto3's sagemaker client that deploy_model_package calls, on the
    embedded default: packages come from the LocalRegistry, models and endpoint configs live
    in this object (only this deployment needs them), and the endpoint is the state file the
    local server reads. Errors are botocore ClientErrors shaped like SageMaker's."""

    def __init__(self, config: Config, workspace: Workspace, registry, account: str):
        self.config = config
        self.workspace = workspace
        self.registry = registry
        self.region = config.aws.region
        self.account = account
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
        """DescribeEndpoint's fields, plus the local conveniences LocalModelData (the
        model.tar.gz served), History (earlier deployments) and StateFile."""
        state_file = EndpointStateFile(self.workspace, EndpointName)
        state = state_file.read()
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
            "ProductionVariants": [{"VariantName": VARIANT_NAME,
                                    "CurrentInstanceCount": 1, "CurrentWeight": 1.0}],
            "DataCaptureConfig": {
                "EnableCapture": capture.get("EnableCapture", False),
                "CaptureStatus": "Started" if capture.get("EnableCapture") else "Stopped",
                "CurrentSamplingPercentage": capture.get("InitialSamplingPercentage"),
                "DestinationS3Uri": capture.get("DestinationS3Uri"),
            },
            "LocalModelData": state.get("LocalModelData"),
            "History": state.get("History", []),
            "StateFile": str(state_file.path),
            **({"LastRollback": state["LastRollback"]} if state.get("LastRollback") else {}),
            **self._local_health(EndpointName),
        }

    def _local_health(self, endpoint_name: str) -> dict:
        """A bake cut short (its process gone) and the capture records the endpoint
        dropped: what `endpoint status` warns about."""
        extras: dict = {}
        unfinished = BakeRecord(self.workspace, endpoint_name).unfinished()
        if unfinished is not None:
            extras["UnfinishedBake"] = {k: unfinished.get(k) for k in (
                "ModelPackageVersion", "PreviousVersion", "StartedAt", "BakeSeconds", "Pid")}
        drops = read_capture_drops(self.workspace, endpoint_name)
        if drops.get("DroppedCaptureRecords"):
            extras["DroppedCaptureRecords"] = drops["DroppedCaptureRecords"]
            extras["CaptureLastError"] = drops.get("LastError")
        return extras

    def _deployed(self, key: str, name: str) -> dict | None:
        """The state of the endpoint whose `key` is `name`: models and endpoint configs of
        a deployment made by another process are known through the state file."""
        endpoints = self.workspace.endpoints_dir
        for path in sorted(endpoints.glob("*.json")) if endpoints.is_dir() else []:
            state = EndpointStateFile(self.workspace, path.stem).read()
            if state and state.get(key) == name:
                return state
        return None

    def describe_endpoint_config(self, *, EndpointConfigName: str) -> dict:
        if EndpointConfigName in self._endpoint_configs:
            return dict(self._endpoint_configs[EndpointConfigName])
        state = self._deployed("EndpointConfigName", EndpointConfigName)
        if state is None:
            raise _client_error("DescribeEndpointConfig", "Could not find endpoint "
                                f'configuration "{EndpointConfigName}".')
        return {"EndpointConfigName": EndpointConfigName,
                "ProductionVariants": [{"VariantName": VARIANT_NAME,
                                        "ModelName": state.get("ModelName")}],
                "DataCaptureConfig": state.get("DataCaptureConfig")}

    def describe_model(self, *, ModelName: str) -> dict:
        if ModelName in self._models:
            model = self._models[ModelName]
            return {"ModelName": ModelName, "Containers": model["Containers"],
                    "ExecutionRoleArn": model["ExecutionRoleArn"]}
        state = self._deployed("ModelName", ModelName)
        if state is None:
            raise _client_error("DescribeModel", f'Could not find model "{ModelName}".')
        return {"ModelName": ModelName,
                "Containers": [{"ModelPackageName": state.get("ModelPackageArn")}]}

    def create_endpoint(self, *, EndpointName: str, EndpointConfigName: str,
                        **_ignored: Any) -> dict:
        with EndpointStateFile(self.workspace, EndpointName).locked():
            if EndpointStateFile(self.workspace, EndpointName).read() is not None:
                raise _client_error("CreateEndpoint", "Cannot create already existing endpoint "
                                    f'"{self._arn("endpoint", EndpointName)}".')
            state = self._state_for(EndpointName, EndpointConfigName, previous=None)
            EndpointStateFile(self.workspace, EndpointName).write(state)
        return {"EndpointArn": state["EndpointArn"]}

    def update_endpoint(self, *, EndpointName: str, EndpointConfigName: str,
                        **_ignored: Any) -> dict:
        with EndpointStateFile(self.workspace, EndpointName).locked():
            previous = EndpointStateFile(self.workspace, EndpointName).read()
            if previous is None:
                raise _client_error("UpdateEndpoint", "Could not find endpoint "
                                    f'"{self._arn("endpoint", EndpointName)}".')
            state = self._state_for(EndpointName, EndpointConfigName, previous=previous)
            EndpointStateFile(self.workspace, EndpointName).write(state)
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
        capture.setdefault("DestinationS3Uri", self.config.data_capture_uri)
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        history = list((previous or {}).get("History", []))
        if previous:
            history.append({key: previous.get(key) for key in (
                "ModelPackageVersion", "ModelPackageArn", "EndpointConfigName", "ModelName",
                "LastModifiedTime")})
        # Which deployment stage this endpoint is (capture records say it, monitoring
        # filters on it); None for an endpoint outside the configured stages.
        stage = next((name for name in ("staging", "prod")
                      if self.config.stage_endpoint_name(name) == endpoint_name), None)
        return {
            "EndpointName": endpoint_name,
            "Stage": stage,
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
            "History": history,
        }


def _parse_time(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value
