"""Put an approved model version on the endpoint, locally or on AWS, with one piece of logic.

The deployment itself is `lambdas.deploy_approved_model.deploy_model_package(client, ...)`,
the function the approval Lambda runs on AWS. Here `client` is the backend's SageMaker
control plane: boto3's sagemaker client on AWS, `scones.local.control_plane.
LocalSageMakerControlPlane` on the embedded default (which keeps the endpoint as a state
file that the local endpoint server watches and serves from).
"""
from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone
from typing import Any, Callable

from lambdas import deploy_approved_model as deploy_logic
from scones.backend import Backend, backend_for
from scones.config import STAGES, Config
from scones.local.endpoint_state import EndpointStateFile, StageTestRecords, deployment_lock
from scones.errors import SconesError
from scones.registry import CONFIDENCE_THRESHOLD_PROPERTY, TEST_DATA_PROPERTY

NOT_DEPLOYED = "NotDeployed"


class DeploymentError(SconesError):
    """A deployment that cannot be done: unapproved version, busy or failed endpoint..."""


def deploy_settings(config: Config, stage: str = "prod") -> deploy_logic.DeploySettings:
    """The approval Lambda's settings for one stage's endpoint, taken from the project
    configuration (deployment.<stage>) instead of env."""
    settings = config.stage(stage)
    try:
        return deploy_logic.DeploySettings(
            endpoint_name=config.stage_endpoint_name(stage),
            execution_role_arn=config.aws.role_arn or "",
            model_package_group=config.pipeline.model_package_group,
            data_capture_s3_uri=config.data_capture_uri,
            capture_sampling_percentage=(settings.capture_sampling_percentage
                                         or config.monitoring.capture_sampling_percentage),
            instance_type=settings.instance_type,
            initial_instance_count=settings.instance_count,
            rollback_alarms=settings.rollback_alarms,
            traffic_routing=settings.traffic_routing,
            traffic_step_percent=settings.traffic_step_percent,
            traffic_wait_seconds=settings.traffic_wait_seconds,
            bake_seconds=int(settings.bake_seconds),
        )
    except deploy_logic.InvalidSettings as exc:
        raise DeploymentError(f"configuration cannot be deployed: {exc}") from None


def deploy_lambda_environment(config: Config) -> dict[str, str]:
    """The approval Lambda's environment for this configuration (its variables are read in
    lambdas/deploy_approved_model.DeploySettings.from_environ). The CloudFormation template
    replaces the role and the capture URI with its parameters. An approval deploys to
    staging; `scones endpoint promote` takes a tested version on to prod."""
    settings = deploy_settings(config, "staging")
    return {
        "ENDPOINT_NAME": settings.endpoint_name,
        "EXECUTION_ROLE_ARN": settings.execution_role_arn,
        "MODEL_PACKAGE_GROUP": settings.model_package_group,
        "DATA_CAPTURE_S3_URI": settings.data_capture_s3_uri,
        "CAPTURE_SAMPLING_PERCENTAGE": str(settings.capture_sampling_percentage),
        "INSTANCE_TYPE": settings.instance_type,
        "ROLLBACK_ALARMS": ",".join(settings.rollback_alarms),
        "TRAFFIC_ROUTING": settings.traffic_routing,
        "TRAFFIC_STEP_PERCENT": str(settings.traffic_step_percent),
        "TRAFFIC_WAIT_SECONDS": str(settings.traffic_wait_seconds),
        "BAKE_SECONDS": str(int(settings.bake_seconds)),
    }


class HealthCheckFailed(DeploymentError):
    """The new model did not load or answer: nothing was switched, the old one serves."""


class DeploymentRolledBack(DeploymentError):
    """The new model crossed the error-rate alarm while baking: the previous one is back."""


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
    local = backend.pick(local=True, aws=False)
    lock = (deployment_lock(backend.workspace, settings.endpoint_name) if local
            else contextlib.nullcontext())
    with lock:
        skipped = unless() if unless is not None else None
        if skipped is not None:
            return skipped
        try:
            if local:
                state_file = EndpointStateFile(backend.workspace, settings.endpoint_name)
                previous = state_file.read()
                if (previous or {}).get("ModelPackageArn") != package["ModelPackageArn"]:
                    health_check(config, package)
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
        bake_seconds = config.stage(stage).bake_seconds
        if local and result["Action"] != "none" and bake_seconds > 0:
            bake(config, stage, package, previous, state_file)
            result["BakedSeconds"] = bake_seconds
    return result


def _image_bytes(image) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def held_back_images(config: Config, package: dict, limit: int,
                     backend: Backend | None = None):
    """(images uint8 N x H x W x 3, labels, class names) from the test split of the pipeline
    execution that built `package`: Preprocess's "test" output (data.npz) beside the
    evaluation its ModelMetrics point to (<pipeline>/<execution>/Evaluate/... ->
    <pipeline>/<execution>/Preprocess/output/test/data.npz). Images the model never saw;
    an even share of each class."""
    import io

    import numpy as np

    from scones.registry import evaluation_url

    recorded = (package.get("CustomerMetadataProperties") or {}).get(TEST_DATA_PROPERTY)
    url = evaluation_url(package) or ""
    if recorded:
        split_url = recorded.rstrip("/") + "/data.npz"
    elif "/Evaluate/" in url:  # versions registered before TestDataUrl was recorded
        split_url = url.split("/Evaluate/")[0] + "/Preprocess/output/test/data.npz"
    else:
        raise DeploymentError(
            f"version {package.get('ModelPackageVersion')} has no evaluation in its "
            "ModelMetrics, so the pipeline execution (and its test split) that built it is "
            "unknown: register versions with `scones pipeline run`")
    backend = backend or backend_for(config)
    try:
        data = np.load(io.BytesIO(backend.object_store().read_bytes(split_url)))
    except SconesError as exc:
        raise DeploymentError(f"the test split of version {package.get('ModelPackageVersion')}"
                              f" ({split_url}) cannot be read: {exc}") from None
    images, labels = data["images"], data["labels"]
    classes = [str(c) for c in data["class_names"]]
    per_class = max(1, limit // len(classes))
    chosen = [i for label in range(len(classes))
              for i in np.flatnonzero(labels == label)[:per_class]][:limit]
    return images[chosen], labels[chosen], classes


def _probe_image(config: Config, package: dict) -> bytes:
    """One real image for the health check: from the version's test split, else the first
    image of the configured local data set."""
    try:
        images, _, _ = held_back_images(config, package, 1)
        return _image_bytes(images[0])
    except DeploymentError:
        from pathlib import Path

        folder = Path(config.data.input_url or "")
        for path in sorted(folder.rglob("*.png")) if folder.is_dir() else []:
            return path.read_bytes()
        raise


def health_check(config: Config, package: dict) -> None:
    """What SageMaker does before a new variant takes traffic: the model loads through its
    own inference code (the container's /ping answers) and answers one real image with the
    classes' probabilities. HealthCheckFailed, naming the reason, otherwise."""
    from pathlib import Path

    from scones.local.endpoint.model_archive import load_model_archive

    version = package.get("ModelPackageVersion")
    tar = Path(package.get("LocalModelData") or "")
    what = f"version {version} ({package.get('ModelDataUrl')})"
    try:
        model = load_model_archive(tar, version=version,
                                   package_arn=package.get("ModelPackageArn"),
                                   source="health check")
    except Exception as exc:
        raise HealthCheckFailed(f"{what} failed its health check, nothing was switched: the "
                                f"model does not load ({_reason(exc)})") from None
    try:
        body, _ = model.invoke(_probe_image(config, package), "image/png", "application/json")
        answer = json.loads(body)
        if not (isinstance(answer, list) and len(answer) == len(config.classes)):
            raise ValueError(f"expected {len(config.classes)} probabilities, got {answer!r}"[:200])
    except DeploymentError:
        raise
    except Exception as exc:
        raise HealthCheckFailed(f"{what} failed its health check, nothing was switched: it "
                                f"does not answer an image ({_reason(exc)})") from None
    finally:
        model.close()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def bake(config: Config, stage: str, package: dict, previous: dict | None,
         state_file: EndpointStateFile) -> None:
    """Watch the new model for bake_seconds: probe it (its inference code on a real image,
    as the endpoint serves it) every bake_probe_interval_seconds; if errors / probes
    crosses max_error_rate, put the previous deployment back (AutoRollbackConfiguration's
    alarm on AWS) and raise DeploymentRolledBack. Nothing to roll back to on a first
    deployment: it is then reported, the model left serving."""
    import time
    from pathlib import Path

    from scones.local.endpoint.model_archive import load_model_archive

    settings = config.stage(stage)
    image = _probe_image(config, package)
    model = load_model_archive(Path(package["LocalModelData"]),
                               version=package.get("ModelPackageVersion"), source="bake")
    probes = errors = 0
    last_error = None
    deadline = time.monotonic() + settings.bake_seconds
    try:
        while True:
            probes += 1
            try:
                model.invoke(image, "image/png", "application/json")
            except Exception as exc:
                errors += 1
                last_error = _reason(exc)
            if errors / probes > settings.max_error_rate and probes >= 2:
                break
            if time.monotonic() + settings.bake_probe_interval_seconds > deadline:
                return
            time.sleep(settings.bake_probe_interval_seconds)
    finally:
        model.close()
    version = package.get("ModelPackageVersion")
    alarm = (f"error rate {errors}/{probes} crossed the alarm's limit "
             f"{settings.max_error_rate:.0%} while baking (last error: {last_error})")
    if previous is None:
        raise DeploymentRolledBack(f"version {version} on {state_file.endpoint_name}: {alarm}; "
                                   "nothing earlier to roll back to: deploy a good version")
    with state_file.locked():
        current = state_file.read() or {}
        restored = dict(previous)
        restored["History"] = list(current.get("History", [])) + [{
            key: current.get(key) for key in ("ModelPackageVersion", "ModelPackageArn",
                                              "EndpointConfigName", "ModelName",
                                              "LastModifiedTime")}]
        restored["LastRollback"] = {"FromVersion": version, "Reason": alarm}
        state_file.write(restored)
    raise DeploymentRolledBack(
        f"version {version} rolled back on {state_file.endpoint_name}: {alarm}; version "
        f"{previous.get('ModelPackageVersion')} serves again")


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
    import dataclasses

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


def run_stage_test(config: Config, stage: str = "staging", backend: Backend | None = None,
               progress: bool = False) -> dict:
    """The staging test: the inference workflow (the same state machine and Lambdas) pinned
    to the stage's endpoint, on held-back images of the test split of the execution that
    built the version it serves; accuracy and failure rate against deployment.<stage>'s
    limits. The result is recorded with the version (promote reads it)."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from workflow.run import ImageSource, run_workflow

    backend = backend or backend_for(config)
    package = serving(config, stage, backend)
    endpoint = config.stage_endpoint_name(stage)
    if package is None:
        raise DeploymentError(f"{stage} endpoint {endpoint} serves nothing to test: approve a "
                              f"version (`scones registry approve N`) or `scones endpoint "
                              f"deploy --stage {stage} --version N`")
    limits = config.stage(stage)
    images, labels, classes = held_back_images(config, package, limits.test_images, backend)
    pinned = config.replace(workflow=dataclasses.replace(config.workflow,
                                                         endpoint_name=endpoint))
    with tempfile.TemporaryDirectory(prefix="scones-stage-test-") as folder:
        sources = []
        for n, (image, label) in enumerate(zip(images, labels)):
            path = Path(folder) / f"{classes[int(label)]}-{n:03d}.png"
            path.write_bytes(_image_bytes(image))
            sources.append(ImageSource(label=path.name, path=path))
        results = run_workflow(pinned, sources, progress=progress)
    truth = {s.label: s.label.rpartition("-")[0] for s in sources}
    correct = sum(1 for r in results if r.predicted_label == truth.get(r.image))
    failed = [r for r in results if r.failed_otherwise]
    accuracy = correct / len(results)
    failure_rate = len(failed) / len(results)
    passed = accuracy >= limits.test_min_accuracy and failure_rate <= limits.test_max_failure_rate
    result = {
        "Stage": stage, "EndpointName": endpoint,
        "ModelPackageVersion": package["ModelPackageVersion"],
        "ModelPackageArn": package["ModelPackageArn"],
        "Images": len(results), "Accuracy": round(accuracy, 4),
        "FailureRate": round(failure_rate, 4),
        "MinAccuracy": limits.test_min_accuracy, "MaxFailureRate": limits.test_max_failure_rate,
        "Failures": sorted({r.error or r.status for r in failed}),
        "Passed": passed,
        "TestedAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record_stage_test(config, backend, result)
    return result


def record_stage_test(config: Config, backend: Backend, result: dict) -> None:
    """Locally a record beside the endpoints; on AWS the package's
    CustomerMetadataProperties (what Studio shows with the version)."""
    if backend.pick(local=True, aws=False):
        StageTestRecords(backend.workspace).record(result["ModelPackageArn"], result["Stage"],
                                                   result)
        return
    stage = result["Stage"].capitalize()
    client = backend.client("sagemaker")
    current = client.describe_model_package(ModelPackageName=result["ModelPackageArn"])
    properties = dict(current.get("CustomerMetadataProperties") or {})
    properties.update({f"{stage}Test": "Passed" if result["Passed"] else "Failed",
                       f"{stage}TestAccuracy": str(result["Accuracy"]),
                       f"{stage}TestFailureRate": str(result["FailureRate"]),
                       f"{stage}TestedAt": result["TestedAt"]})
    # the approval is restated unchanged: an update that leaves it out must not clear it
    # (moto's UpdateModelPackage does; SageMaker keeps it either way)
    approval = {key: current[key] for key in ("ModelApprovalStatus", "ApprovalDescription")
                if current.get(key)}
    client.update_model_package(ModelPackageArn=result["ModelPackageArn"],
                                CustomerMetadataProperties=properties, **approval)


def stage_test_result(config: Config, backend: Backend, package: dict,
                      stage: str = "staging") -> dict | None:
    if backend.pick(local=True, aws=False):
        return StageTestRecords(backend.workspace).result(package["ModelPackageArn"], stage)
    properties = package.get("CustomerMetadataProperties") or {}
    verdict = properties.get(f"{stage.capitalize()}Test")
    if verdict is None:
        return None
    return {"Passed": verdict == "Passed",
            "Accuracy": properties.get(f"{stage.capitalize()}TestAccuracy"),
            "FailureRate": properties.get(f"{stage.capitalize()}TestFailureRate")}


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
    deployment = None
    # On AWS the EventBridge rule hands the approval to the deploy state machine / Lambda;
    # locally there is no event bus, so the approval deploys here.
    if changed and backend.pick(local=True, aws=False):
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

        deployment = deploy_model_package(config, number, backend, stage="staging",
                                          unless=staging_is_newer)
    return package, changed, deployment


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
                                            "LastRollback")
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
