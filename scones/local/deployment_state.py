"""The state of the local deployments: each endpoint's state file,
<workspace>/endpoints/<name>.json (the one reader and writer), the deployment lock and the
stage-test records. The local SageMaker control plane writes it on every deployment; the local endpoint
server reads it (and re-reads it whenever it changes) to know what to serve.

LocalModelData (the model.tar.gz served) is stored relative to the workspace and handed to
readers as an absolute path, so a moved workspace keeps serving.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Iterator

from scones.config import Config
from scones.errors import SconesError
from scones.workspace import Workspace

HISTORY_LIMIT = 50  # previous deployments kept in the state file, newest last


class EndpointStateError(SconesError):
    """The endpoint state file exists but cannot be used."""


class EndpointStateFile:
    def __init__(self, workspace: Workspace, endpoint_name: str):
        self.workspace = workspace
        self.endpoint_name = endpoint_name
        self.path = workspace.endpoint_state_file(endpoint_name)

    @classmethod
    def of(cls, config: Config, endpoint_name: str | None = None) -> "EndpointStateFile":
        return cls(Workspace(config.local.workspace),
                   endpoint_name or config.workflow.endpoint_name)

    def mtime_ns(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def read(self) -> dict | None:
        """The state as a dict (LocalModelData absolute), None when nothing is deployed."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            state = json.loads(text)
        except ValueError as exc:
            raise EndpointStateError(f"endpoint state file {self.path} is not valid JSON "
                                     f"({exc}); {self._repair_advice()}") from None
        if not isinstance(state, dict) or not state.get("LocalModelData"):
            raise EndpointStateError(
                f"endpoint state file {self.path} has no LocalModelData (the model.tar.gz to "
                f"serve); {self._repair_advice()}")
        state["LocalModelData"] = str(self.workspace.resolve(state["LocalModelData"]))
        return state

    def _repair_advice(self) -> str:
        # Deploying reads the old state first (for its History), so the broken file has to
        # go before `endpoint deploy` can write a new one.
        return (f"move it aside (`mv {self.path} {self.path}.broken`), then deploy again "
                "with `scones endpoint deploy --version N` (`scones registry list` shows the "
                "versions)")

    def set_aside_if_broken(self) -> Path | None:
        """Rename an unreadable state file to <name>.json.broken-<time> (kept for a look);
        where it went, or None if it was readable or absent. For a deploy that replaces it."""
        try:
            self.read()
            return None
        except EndpointStateError:
            import time

            aside = self.path.with_name(f"{self.path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
            self.path.replace(aside)
            return aside

    def write(self, state: dict) -> None:
        """Atomically: the server never reads half a deployment."""
        stored = dict(state)
        stored["LocalModelData"] = self.workspace.relative(state["LocalModelData"])
        stored["History"] = list(state.get("History", []))[-HISTORY_LIMIT:]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stored, indent=2) + "\n")
        tmp.replace(self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise read-modify-write across processes, so two concurrent deployments
        cannot drop each other's History entry."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.endpoint_name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def model_tar(self) -> Path | None:
        state = self.read()
        return Path(state["LocalModelData"]) if state else None


@contextlib.contextmanager
def deployment_lock(workspace: Workspace, endpoint_name: str) -> Iterator[None]:
    """Serialise whole deployments of one endpoint across processes (health check, switch,
    bake): a second approval made during a deployment waits and is delivered after it, as
    the project template's deploy state machine waits for an Updating endpoint. A lock file
    of its own: EndpointStateFile.locked() is taken inside, and flock is per open file."""
    workspace.endpoints_dir.mkdir(parents=True, exist_ok=True)
    with open(workspace.endpoints_dir / f".{endpoint_name}.deploy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def deployment_in_progress(workspace: Workspace, endpoint_name: str) -> bool:
    """Whether a process holds the endpoint's deployment lock now (a bake recorded as
    unfinished while nobody holds it was cut short: its process is gone)."""
    path = workspace.endpoints_dir / f".{endpoint_name}.deploy.lock"
    if not path.exists():
        return False
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


class BakeRecord:
    """<workspace>/endpoints/bakes/<endpoint>.json: the bake under way on an endpoint, written
    when it starts and removed when it ends (passed or rolled back). One left behind while
    no deployment runs is a bake that never finished (its process was killed): status
    shows it, and the next deployment of that version resumes it, with the previous
    deployment it kept to roll back to."""

    def __init__(self, workspace: Workspace, endpoint_name: str):
        self.workspace = workspace
        self.endpoint_name = endpoint_name
        self.path = workspace.endpoints_dir / "bakes" / f"{endpoint_name}.json"

    def start(self, stage: str, package: dict, previous: dict | None,
              bake_seconds: float) -> None:
        import time

        record = {"EndpointName": self.endpoint_name, "Stage": stage,
                  "ModelPackageVersion": package.get("ModelPackageVersion"),
                  "ModelPackageArn": package.get("ModelPackageArn"),
                  "PreviousVersion": (previous or {}).get("ModelPackageVersion"),
                  "Previous": ({**previous,
                                "LocalModelData": self.workspace.relative(
                                    previous["LocalModelData"])} if previous else None),
                  "BakeSeconds": bake_seconds,
                  "StartedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "Pid": os.getpid()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        tmp.replace(self.path)

    def read(self) -> dict | None:
        try:
            record = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise EndpointStateError(f"bake record {self.path} is not valid JSON ({exc}); "
                                     "delete it, then check the endpoint with `scones "
                                     "endpoint status`") from None
        previous = record.get("Previous")
        if previous and previous.get("LocalModelData"):
            previous["LocalModelData"] = str(self.workspace.resolve(previous["LocalModelData"]))
        return record

    def unfinished(self) -> dict | None:
        """The record of a bake whose process is gone, None if none (or one is running)."""
        record = self.read()
        if record is None or deployment_in_progress(self.workspace, self.endpoint_name):
            return None
        return record

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


class StageTestRecords:
    """<workspace>/endpoints/tests/stage-tests.json: each model package's stage test results
    ({package ARN: {stage: result}}), what `scones endpoint promote` checks. (A folder of
    its own: every endpoints/*.json is an endpoint state file.)"""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.path = workspace.endpoints_dir / "tests" / "stage-tests.json"

    def read(self) -> dict:
        try:
            records = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise EndpointStateError(f"stage test records {self.path} are not valid JSON "
                                     f"({exc}); delete the file and test again") from None
        return records if isinstance(records, dict) else {}

    def result(self, package: dict, stage: str) -> dict | None:
        return (self.read().get(package["ModelPackageArn"]) or {}).get(stage)

    def record(self, package_arn: str, stage: str, result: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(".stage-tests.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self.read()
            records.setdefault(package_arn, {})[stage] = result
            tmp = self.path.with_name(f".stage-tests.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(records, indent=2, default=str) + "\n")
            tmp.replace(self.path)
