"""What SageMaker's deployment guardrails do on AWS, done for the local endpoint.

`LocalDeploymentGuard` wraps one deployment of one endpoint: deployments of an endpoint are
serialised (a lock in the workspace); a new model is loaded through its own inference code
and answers /ping and one real image BEFORE the endpoint switches (HealthCheckFailed
otherwise, the old version serving); then it is watched for deployment.<stage>.bake_seconds
and rolled back if its error rate crosses max_error_rate (DeploymentRolledBack).
On AWS the same settings configure SageMaker's own guardrails, and the guard does nothing
(scones.backend.AwsBackend.deployment_guard).
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from scones.config import Config
from scones.errors import DeploymentError, DeploymentRolledBack, HealthCheckFailed
from scones.local.endpoint.model_archive import load_model_archive
from scones.local.deployment_state import EndpointStateFile, deployment_lock
from scones.local.resources import LocalResources
from scones.test_split import held_back_images, png_bytes


class LocalDeploymentGuard:
    """`with guard: guard.before_switch(package); <deploy>; guard.after_switch(result,
    package)`: the lock, the health check and the bake of one deployment."""

    def __init__(self, config: Config, stage: str, endpoint_name: str):
        self.config = config
        self.stage = stage
        self.resources = LocalResources(config)
        self.state_file = EndpointStateFile(self.resources.workspace, endpoint_name)
        self.previous: dict | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "LocalDeploymentGuard":
        self._stack.enter_context(deployment_lock(self.resources.workspace,
                                                  self.state_file.endpoint_name))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def before_switch(self, package: dict) -> None:
        """The health check, unless the endpoint already serves this package."""
        self.previous = self.state_file.read()
        if (self.previous or {}).get("ModelPackageArn") != package["ModelPackageArn"]:
            health_check(self.config, package, self.resources)

    def after_switch(self, result: dict, package: dict) -> None:
        """The bake, when the deployment switched the model."""
        bake_seconds = self.config.stage(self.stage).bake_seconds
        if result["Action"] != "none" and bake_seconds > 0:
            bake(self.config, self.stage, package, self.previous, self.state_file,
                 self.resources)
            result["BakedSeconds"] = bake_seconds


def _probe_image(config: Config, package: dict, resources: LocalResources) -> bytes:
    """One real image for the health check: from the version's test split, else the first
    image of the configured local data set."""
    try:
        images, _, _ = held_back_images(package, 1, resources.object_store())
        return png_bytes(images[0])
    except DeploymentError:
        folder = Path(config.data.input_url or "")
        for path in sorted(folder.rglob("*.png")) if folder.is_dir() else []:
            return path.read_bytes()
        raise


def health_check(config: Config, package: dict, resources: LocalResources) -> None:
    """What SageMaker does before a new variant takes traffic: the model loads through its
    own inference code (the container's /ping answers) and answers one real image with the
    classes' probabilities. HealthCheckFailed, naming the reason, otherwise."""
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
        body, _ = model.invoke(_probe_image(config, package, resources), "image/png",
                               "application/json")
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
         state_file: EndpointStateFile, resources: LocalResources) -> None:
    """Watch the new model for bake_seconds: probe it (its inference code on a real image,
    as the endpoint serves it) every bake_probe_interval_seconds; if errors / probes
    crosses max_error_rate, put the previous deployment back (AutoRollbackConfiguration's
    alarm on AWS) and raise DeploymentRolledBack. Nothing to roll back to on a first
    deployment: it is then reported, the model left serving."""
    settings = config.stage(stage)
    image = _probe_image(config, package, resources)
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
