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
from scones.deploy_settings import PROBE_INFERENCE_ID_PREFIX
from scones.errors import SconesError
from scones.local.deployment_state import BakeRecord, EndpointStateFile, deployment_lock
from scones.local.endpoint.process import EndpointProcess
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
        """The health check, unless the endpoint already serves this package; a bake of
        this package cut short before (its process killed) is resumed here instead."""
        self.previous = self.state_file.read()
        self.bake_record = BakeRecord(self.resources.workspace, self.state_file.endpoint_name)
        self.resumed = None
        unfinished = self.bake_record.read()  # we hold the lock: its baker is gone
        if unfinished is not None:
            if (unfinished.get("ModelPackageArn") == package["ModelPackageArn"]
                    == (self.previous or {}).get("ModelPackageArn")):
                self.resumed = self._resume_bake(package, unfinished)
                return
            self.bake_record.clear()  # superseded: another version is being deployed
        if (self.previous or {}).get("ModelPackageArn") != package["ModelPackageArn"]:
            health_check(self.config, package, self.resources, self.state_file.endpoint_name)

    def after_switch(self, result: dict, package: dict) -> None:
        """The bake, when the deployment switched the model. The bake is recorded while it
        runs: killed midway, the record stays, status shows it, the next deployment of the
        version resumes it."""
        if self.resumed is not None:
            result.update(self.resumed)
            return
        bake_seconds = self.config.stage(self.stage).bake_seconds
        if result["Action"] != "none" and bake_seconds > 0:
            self.bake_record.start(self.stage, package, self.previous, bake_seconds)
            try:
                bake(self.config, self.stage, package, self.previous, self.state_file,
                     self.resources)
            except DeploymentRolledBack:
                self.bake_record.clear()  # finished: by the rollback
                raise
            self.bake_record.clear()  # any other way out leaves it: unfinished
            result["BakedSeconds"] = bake_seconds

    def _resume_bake(self, package: dict, unfinished: dict) -> dict:
        """Bake again, from the start, a version whose bake was cut short: it passes, or
        it is rolled back to the deployment recorded before it."""
        bake_seconds = self.config.stage(self.stage).bake_seconds
        previous = unfinished.get("Previous")
        self.bake_record.start(self.stage, package, previous, bake_seconds)
        try:
            if bake_seconds > 0:
                bake(self.config, self.stage, package, previous, self.state_file,
                     self.resources)
        except DeploymentRolledBack:
            self.bake_record.clear()
            raise
        self.bake_record.clear()
        return {"Action": "resumed", "BakedSeconds": bake_seconds,
                "ResumedBake": {k: unfinished.get(k) for k in ("StartedAt", "Pid",
                                                                "PreviousVersion")}}


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


def _probe(url: str, image: bytes, purpose: str, n: int) -> tuple[int, str]:
    """POST the image to /invocations as traffic does: (HTTP status, answer or message)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url}/invocations", data=image, method="POST",
        headers={"Content-Type": "image/png", "Accept": "application/json",
                 "X-Amzn-SageMaker-Inference-Id": f"{PROBE_INFERENCE_ID_PREFIX}{purpose}-{n}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            body = json.loads(body).get("message") or body
        except (ValueError, AttributeError):
            pass
        return exc.code, body
    except OSError as exc:  # refused, reset, timed out: the endpoint did not answer
        return 0, f"{type(exc).__name__}: {exc}"


def health_check(config: Config, package: dict, resources: LocalResources,
                 endpoint_name: str) -> None:
    """What SageMaker does before a new variant takes traffic, through the request path
    traffic takes: an endpoint process for endpoint_name loads the version through its own
    inference code, answers /ping, and answers one real image on /invocations (data
    capture included) with the classes' probabilities. HealthCheckFailed, naming the
    reason, otherwise."""
    version = package.get("ModelPackageVersion")
    tar = Path(package.get("LocalModelData") or "")
    what = f"version {version} ({package.get('ModelDataUrl')})"
    image = _probe_image(config, package, resources)
    try:
        with EndpointProcess(config, model_version=version, model_tar=tar,
                             endpoint_name=endpoint_name) as endpoint:
            status, answer = _probe(endpoint.url, image, "health-check", 0)
    except SconesError as exc:
        raise HealthCheckFailed(f"{what} failed its health check, nothing was switched: the "
                                f"model does not load ({_reason(exc)})") from None
    try:
        if status != 200:
            raise ValueError(f"HTTP {status} from /invocations: {answer}")
        probabilities = json.loads(answer)
        if not (isinstance(probabilities, list) and len(probabilities) == len(config.classes)):
            raise ValueError(f"expected {len(config.classes)} probabilities, got "
                             f"{probabilities!r}"[:200])
    except ValueError as exc:
        raise HealthCheckFailed(f"{what} failed its health check, nothing was switched: it "
                                f"does not answer an image ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def bake(config: Config, stage: str, package: dict, previous: dict | None,
         state_file: EndpointStateFile, resources: LocalResources) -> None:
    """Watch the new model for bake_seconds through the endpoint's real request path: an
    endpoint process serving what the state file now names (its data capture included)
    gets a real image on /invocations every bake_probe_interval_seconds; an answer other
    than 200 is an error. If errors / probes crosses max_error_rate, put the previous
    deployment back (AutoRollbackConfiguration's alarm on AWS) and raise
    DeploymentRolledBack. Nothing to roll back to on a first deployment: it is then
    reported, the model left serving."""
    settings = config.stage(stage)
    image = _probe_image(config, package, resources)
    probes = errors = 0
    last_error = None
    try:
        with EndpointProcess(config, endpoint_name=state_file.endpoint_name) as endpoint:
            # the bake lasts bake_seconds of probing, not of starting the endpoint process
            deadline = time.monotonic() + settings.bake_seconds
            while True:
                probes += 1
                status, answer = _probe(endpoint.url, image, "bake", probes)
                if status != 200:
                    errors += 1
                    last_error = f"HTTP {status}: {' '.join(answer.split())[:300]}"
                if errors / probes > settings.max_error_rate and probes >= 2:
                    break
                if time.monotonic() + settings.bake_probe_interval_seconds > deadline:
                    return
                time.sleep(settings.bake_probe_interval_seconds)
    except SconesError as exc:  # the endpoint would not even start on the new model
        probes, errors, last_error = max(probes, 1), max(probes, 1), _reason(exc)
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
