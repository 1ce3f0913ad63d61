"""Put an approved model version on the endpoint, locally or on AWS, with one piece of logic.

The deployment itself is `lambdas.deploy_approved_model.deploy_model_package(client, ...)`,
the function the approval Lambda runs on AWS. Here `client` is the backend's SageMaker
control plane: boto3's sagemaker client on AWS, `scones.local.control_plane.
LocalSageMakerControlPlane` on the embedded default (which keeps the endpoint as a state
file that the local endpoint server watches and serves from).
"""
from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Callable

from lambdas import deploy_approved_model as deploy_logic
from scones.backend import Backend, backend_for
from scones.config import STAGES, Config
from scones.deploy_settings import deploy_lambda_environment, deploy_settings  # noqa: F401
from scones.errors import (DeploymentError, DeploymentRolledBack,  # noqa: F401
                           HealthCheckFailed, SconesError)
from scones.registry import CONFIDENCE_THRESHOLD_PROPERTY

NOT_DEPLOYED = "NotDeployed"

# deploy_settings, deploy_lambda_environment and the deployment errors live in the core (the
# local twin reads the settings and raises the errors too); they are named here as well for
# the layers above, which know deployments by this module.


class PromotionRefused(DeploymentError):
    """Staging's version has not passed its staging test."""


def deploy_model_package(config: Config, version: int | str,
                         backend: Backend | None = None, stage: str = "prod",
                         unless: Callable[[], dict | None] | None = None) -> dict:
    """Deploy registered version `version` to the stage's endpoint (prod:
    config.workflow.endpoint_name, what the inference workflow calls).

    Only Approved versions deploy; deploying an older approved version is the rollback. A
    version the endpoint already serves is a no-op (Action "none"). Locally, as SageMaker's
    deployment guardrails do on AWS: deployments of one endpoint are serialised; the new
    model is loaded through its own inference code and answers /ping and one real image
    BEFORE the endpoint switches (HealthCheckFailed otherwise, the old version serving);
    then it is watched for deployment.<stage>.bake_seconds and rolled back if its error
    rate crosses max_error_rate (DeploymentRolledBack).
    Returns the Lambda's result (Action created|updated|none, names, ModelPackageVersion...).
    unless(): asked under the deployment's lock, before anything else; a dict it returns
    is the answer instead (nothing deployed). A check of what the endpoint serves belongs
    there: made before the lock it could be stale by the time the deployment runs.
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
    settings = deploy_settings(config, stage)
    with backend.deployment_guard(stage, settings.endpoint_name) as guard:
        skipped = unless() if unless is not None else None
        if skipped is not None:
            return skipped
        try:
            guard.before_switch(package)
            result = deploy_logic.deploy_model_package(client, settings,
                                                       package["ModelPackageArn"])
        except deploy_logic.DeploymentError as exc:
            raise DeploymentError(f"deploying version {version}: {exc}") from exc
        except SconesError:
            raise
        except Exception as exc:
            if _error_code(exc) is None:
                raise
            raise DeploymentError(f"deploying version {version} to endpoint "
                                  f"{settings.endpoint_name}: {exc}") from exc
        result["Stage"] = stage
        guard.after_switch(result, package)
    return result


# --------------------------------------------------------------------------- stages

def serving(config: Config, stage: str, backend: Backend | None = None) -> dict | None:
    """The model package a stage's endpoint serves (DescribeModelPackage), None if none."""
    backend = backend or backend_for(config)
    status = endpoint_status(config, backend, stage)
    if status.get("ModelPackageVersion") is None:
        return None
    return backend.registry().describe(status["ModelPackageVersion"])


def model_threshold(package: dict | None) -> float | None:
    """The confidence threshold a registered version carries, None if it has none."""
    raw = ((package or {}).get("CustomerMetadataProperties") or {}).get(
        CONFIDENCE_THRESHOLD_PROPERTY)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if 0 <= value <= 1 else None


def with_model_threshold(config: Config, backend: Backend | None = None,
                         model_version: int | str | None = None) -> Config:
    """THE threshold decision, for every path that filters (one image, a folder, a prefix,
    the staging test, a named --model-version; `workflow deploy` on AWS): the config whose
    workflow.confidence_threshold is the one registered with the version that answers -
    `model_version` when one is named, else the version the workflow's endpoint serves -
    so the threshold always means what train.py chose it for (training.target_precision).
    The configured threshold is used instead only when set as the override
    (workflow.use_model_threshold: false), or when the version carries none."""
    if not config.workflow.use_model_threshold:
        return config
    backend = backend or backend_for(config)
    if model_version is not None:
        package = backend.registry().describe(model_version)
    else:
        stage = next((name for name in ("prod", "staging")
                      if config.stage_endpoint_name(name) == config.workflow.endpoint_name),
                     "prod")
        package = serving(config, stage, backend)
    threshold = model_threshold(package)
    if threshold is None:
        return config
    return config.replace(workflow=dataclasses.replace(config.workflow,
                                                       confidence_threshold=threshold))


def record_stage_test(config: Config, backend: Backend, result: dict) -> None:
    """Locally a record beside the endpoints; on AWS the package's
    CustomerMetadataProperties (what Studio shows with the version)."""
    backend.stage_tests().record(result["ModelPackageArn"], result["Stage"], result)


def stage_test_result(config: Config, backend: Backend, package: dict,
                      stage: str = "staging") -> dict | None:
    return backend.stage_tests().result(package, stage)


def promote(config: Config, backend: Backend | None = None) -> dict:
    """Staging's version to prod (with prod's guardrails), refused unless it passed its
    staging test (the project template's manual approval gate comes after that test too)."""
    backend = backend or backend_for(config)
    package = serving(config, "staging", backend)
    if package is None:
        raise PromotionRefused("staging serves nothing to promote: approve a version first "
                               "(`scones registry approve N` deploys it to staging)")
    version = package["ModelPackageVersion"]
    result = stage_test_result(config, backend, package, "staging")
    if result is None:
        raise PromotionRefused(f"version {version} on staging has not been tested: run "
                               "`scones endpoint test --stage staging` first")
    if not result.get("Passed"):
        raise PromotionRefused(
            f"version {version} failed its staging test (accuracy {result.get('Accuracy')}, "
            f"failure rate {result.get('FailureRate')}): not promoted; prod unchanged")
    return deploy_model_package(config, version, backend, stage="prod")


def approve_and_deploy(config: Config, version: int | str, description: str | None = None,
                       deploy_older: bool = False) -> tuple[dict, bool, dict | None]:
    """Approve a registered version; locally also deploy it to staging, as the EventBridge
    rule and the deploy state machine do on AWS. Returns (package, changed, deployment or
    None); deployment is {"Action": "skipped", "Reason"} when the version is older than the
    one staging serves and deploy_older is not set (a rollback must be asked for).
    A re-approved version keeps its rejection reason in its ApprovalDescription."""
    backend = backend_for(config)
    registry = backend.registry()
    before = registry.describe(version)
    if before.get("ModelApprovalStatus") == "Rejected" and before.get("ApprovalDescription"):
        description = (f"{description or 'approved'} (previously rejected: "
                       f"{before['ApprovalDescription']})")
    package, changed = registry.approve(version, description)
    if not changed:
        return package, changed, None
    number = package["ModelPackageVersion"]

    def staging_is_newer() -> dict | None:
        # asked under staging's deployment lock: a concurrent approval of a newer
        # version has finished deploying by then, and is seen
        current = serving(config, "staging", backend)
        if current and current["ModelPackageVersion"] > number and not deploy_older:
            return {
                "Action": "skipped", "Stage": "staging",
                "Reason": f"staging serves version {current['ModelPackageVersion']}, "
                          f"newer than {number}: not rolled back (approve with --deploy, "
                          f"or `scones endpoint deploy --stage staging --version {number}`)"}
        return None

    # On AWS the EventBridge rule hands the approval to the deploy state machine / Lambda;
    # locally there is no event bus, so the backend deploys it now.
    return package, changed, backend.deliver_approval(
        lambda: deploy_model_package(config, number, backend, stage="staging",
                                     unless=staging_is_newer))


def reject_and_report(config: Config, version: int | str, description: str,
                      undeploy: bool = False) -> tuple[dict, bool, list[str]]:
    """Reject a version; say what it means for the endpoints: the stages serving it keep
    serving it (warned), unless undeploy, which rolls each back to the newest other
    Approved version. Returns (package, changed, messages)."""
    backend = backend_for(config)
    package, changed = backend.registry().reject(version, description)
    number = package["ModelPackageVersion"]
    messages = []
    for stage in STAGES:
        current = serving(config, stage, backend)
        if not current or current["ModelPackageVersion"] != number:
            continue
        endpoint = config.stage_endpoint_name(stage)
        if not undeploy:
            messages.append(f"warning: {stage} endpoint {endpoint} still serves version "
                            f"{number}; roll it back with --undeploy (to the previous "
                            "Approved version) or `scones endpoint deploy --stage "
                            f"{stage} --version N`")
            continue
        approved = [p for p in backend.registry().list_packages()
                    if p.get("ModelApprovalStatus") == "Approved"
                    and p["ModelPackageVersion"] != number]
        if not approved:
            messages.append(f"warning: no other Approved version to roll {stage} back to: "
                            f"{endpoint} still serves version {number}")
            continue
        target = max(p["ModelPackageVersion"] for p in approved)
        deploy_model_package(config, target, backend, stage=stage)
        messages.append(f"{stage} endpoint {endpoint}: rolled back to version {target}")
    return package, changed, messages


def endpoint_status(config: Config, backend: Backend | None = None,
                    stage: str = "prod") -> dict:
    """{"EndpointName", "ModelPackageVersion", "EndpointStatus", ...}: what the endpoint
    serves now, through the SageMaker API (DescribeEndpoint -> its config -> its model ->
    the model package) of the backend's control plane. EndpointStatus is "NotDeployed" when
    there is no endpoint."""
    backend = backend or backend_for(config)
    name = config.stage_endpoint_name(stage)
    client = backend.sagemaker()
    try:
        endpoint = client.describe_endpoint(EndpointName=name)
    except Exception as exc:
        code, message = _error_code(exc) or (None, "")
        if code == "ValidationException" and "Could not find endpoint" in message:
            return {"EndpointName": name, "Stage": stage, "ModelPackageVersion": None,
                    "EndpointStatus": NOT_DEPLOYED}
        if code is None:
            raise
        raise DeploymentError(f"cannot describe endpoint {name}: {exc}") from exc
    result = {
        "EndpointName": name,
        "Stage": stage,
        "ModelPackageVersion": None,
        "EndpointStatus": endpoint.get("EndpointStatus"),
        "EndpointArn": endpoint.get("EndpointArn"),
        "EndpointConfigName": endpoint.get("EndpointConfigName"),
        "LastModifiedTime": _iso(endpoint.get("LastModifiedTime")),
        "DataCaptureConfig": endpoint.get("DataCaptureConfig"),
    }
    # The local control plane's extras (what file is served, earlier deployments).
    result.update({k: endpoint[k] for k in ("LocalModelData", "History", "StateFile",
                                            "LastRollback", "UnfinishedBake",
                                            "DroppedCaptureRecords", "CaptureLastError")
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
