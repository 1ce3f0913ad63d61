"""Retraining that learns something: the next data snapshot, then a pipeline run on it.

A drift alarm (workflow.monitoring.check) says the traffic moved away from what the serving
model learnt. Running the pipeline again on the same data teaches it nothing (and on
SageMaker would reuse the cached steps and register a copy). So retraining:

1. takes the current snapshot: the one the newest alarmed version was trained on
   (CustomerMetadataProperties.DataSnapshotUrl), else the newest in the bucket, else a
   snapshot of data.input_url;
2. collects the captured requests that have ground truth (`scones monitor label`, merged by
   inferenceId/eventId), drops the ones whose bytes the snapshot already holds, and balances
   them (below);
3. with nothing new, says so and starts nothing; otherwise builds the next snapshot (the
   current one plus the new images, its parent the current one) and, unless a registered
   version already learnt from exactly that snapshot, starts the pipeline with
   InputDataUrl = the new snapshot. The version it registers names both snapshots.

Balance: each class gains at most as many new images as the class with the fewest new ones,
plus up to a tenth of the snapshot's mean class size more. A drift seen in one class only can
still be learnt from, but a flood of one class cannot swamp the other; images held back stay
in the capture and count next time.

Composes workflow.monitoring, scones.snapshots and pipelines.executors, so it lives in the
app layer (workflow may not import pipelines).
"""
from __future__ import annotations

import base64
import binascii
import math
import sys
from dataclasses import dataclass, field
from typing import TextIO

from pipelines.executors import pipeline_executor
from scones.backend import backend_for
from scones.config import Config
from scones.errors import SconesError
from scones.registry import DATA_SNAPSHOT_PROPERTY, PARENT_SNAPSHOT_PROPERTY
from scones.snapshots import (Snapshot, SnapshotError, extend_snapshot, is_snapshot_url,
                              load_snapshot, newest_snapshot, sha256, snapshot_source)
from workflow.monitoring import default_source, iter_capture_files, parse_capture_lines
from workflow.monitoring.check import (MonitorResult, MonitorState, merged_predictions,
                                       record_retraining, retraining_decision)

EXTRA_SHARE = 0.1  # of the mean class size: how far one class may out-gain the others


@dataclass
class RetrainingPlan:
    current: Snapshot
    added: dict[str, int] = field(default_factory=dict)
    held_back: dict[str, int] = field(default_factory=dict)
    known: int = 0              # labelled captures whose bytes the snapshot already holds
    next: Snapshot | None = None

    @property
    def new_images(self) -> int:
        return sum(self.added.values())


def version_snapshot(package: dict) -> str | None:
    url = (package.get("CustomerMetadataProperties") or {}).get(DATA_SNAPSHOT_PROPERTY)
    return url if is_snapshot_url(url) else None


def current_snapshot(config: Config, versions: list[int] | None = None) -> Snapshot:
    """The snapshot the newest of `versions` was trained on, else the newest in the bucket,
    else a snapshot of data.input_url."""
    backend = backend_for(config)
    store = backend.object_store()
    registry = backend.registry()
    for version in sorted((v for v in versions or [] if v is not None), reverse=True):
        try:
            url = version_snapshot(registry.describe(version))
        except SconesError:
            continue
        if url:
            return load_snapshot(store, url)
    try:
        return newest_snapshot(store, config.aws.bucket)
    except SnapshotError:
        if not config.data.input_url:
            raise
    return snapshot_source(store, config.aws.bucket, config.data.input_url)


def labelled_captures(config: Config) -> list[tuple[str, bytes]]:
    """(true class, request bytes) of every captured request that has ground truth, newest
    first."""
    labels: dict[str, str] = {}
    for row in merged_predictions(MonitorState(config)):
        for key in ("InferenceId", "EventId"):
            if row.get(key):
                labels[row[key]] = row["Label"]
    if not labels:
        return []
    found = []
    for name, content in iter_capture_files(config, default_source(config)):
        records, _ = parse_capture_lines(name, content, len(config.classes))
        for record in records:
            label = labels.get(record.inference_id) or labels.get(record.event_id)
            if label is None or record.input_base64 is None:
                continue
            try:
                found.append((record.inference_time, label,
                              base64.b64decode(record.input_base64, validate=True)))
            except (binascii.Error, ValueError):
                continue  # the monitor already reported it as malformed
    found.sort(key=lambda item: item[0], reverse=True)
    return [(label, data) for _, label, data in found]


def _suffix(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    return None  # not an image format the model trains on


def plan_retraining(config: Config, versions: list[int] | None = None) -> RetrainingPlan:
    """What the next snapshot would add to the current one (plan.next is None: nothing)."""
    store = backend_for(config).object_store()
    plan = RetrainingPlan(current_snapshot(config, versions))
    have = plan.current.hashes
    per_class: dict[str, list[tuple[str, bytes]]] = {name: [] for name in config.classes}
    for label, data in labelled_captures(config):
        digest, suffix = sha256(data), _suffix(data)
        if digest in have:
            plan.known += 1
            continue
        if suffix is None or label not in per_class:
            continue
        have = have | {digest}
        per_class[label].append((f"{label}/captured-{digest[:16]}{suffix}", data))
    counts = plan.current.counts()
    mean_size = sum(counts.get(c, 0) for c in config.classes) / len(config.classes)
    cap = max(min(len(v) for v in per_class.values()), math.ceil(EXTRA_SHARE * mean_size))
    additions = []
    for name, files in per_class.items():
        additions += files[:cap]
        plan.added[name] = len(files[:cap])
        plan.held_back[name] = len(files) - plan.added[name]
    if additions:
        plan.next = extend_snapshot(store, config.aws.bucket, plan.current, additions)
    return plan


def _already_trained_on(config: Config, snapshot: Snapshot) -> int | None:
    for package in backend_for(config).registry().list_packages():
        if version_snapshot(package) == snapshot.url:
            return package["ModelPackageVersion"]
    return None


def start_retraining(config: Config, result: MonitorResult, progress: bool = True,
                     out: TextIO = sys.stderr) -> dict:
    """The alarm's action: a pipeline run on the next snapshot, unless the cool-down holds it
    back or there is nothing new to learn from. The cool-down is recorded before the run
    starts, so a second monitor run meanwhile does not start another."""
    start, reason = retraining_decision(config, result)
    if not start:
        return {"Started": False, "Reason": reason}
    versions = [int(v) for v in result.summary.get("Versions", {}) if v not in (None, "None")]
    plan = plan_retraining(config, versions)
    answer = {"DataSnapshotUrl": plan.next.url if plan.next else None,
              "ParentDataSnapshotUrl": plan.current.url, "ImagesAdded": plan.added,
              "ImagesHeldBack": plan.held_back}
    if plan.next is None:
        return {"Started": False, **answer, "Reason": (
            f"{reason}, but there is nothing new to learn from: no labelled captured image "
            f"that snapshot {plan.current.id[:12]} lacks ({plan.known} labelled one(s) it "
            "already holds). Label the drifted traffic with `scones monitor label` "
            "(ground truth by inferenceId), then run again; no pipeline run started")}
    trained = _already_trained_on(config, plan.next)
    if trained is not None:
        return {"Started": False, **answer, "Reason": (
            f"{reason}, but version {trained} already learnt from snapshot "
            f"{plan.next.id[:12]}: a run would register a copy of it; none started")}
    state = MonitorState(config)
    previous = state.retraining_file.read_bytes() if state.retraining_file.exists() else None
    record_retraining(config, None, "Starting", result)
    added = ", ".join(f"{n} {name}" for name, n in plan.added.items() if n)
    print(f"monitor: {reason}; snapshot {plan.next.id[:12]} = {plan.current.id[:12]} + "
          f"{added}; starting a pipeline run", file=out)
    try:
        execution = pipeline_executor(backend_for(config)).run(
            parameters={"InputDataUrl": plan.next.url}, progress=progress)
    except BaseException:
        # a run that never started must not hold the cool-down
        if previous is None:
            state.retraining_file.unlink(missing_ok=True)
        else:
            state.retraining_file.write_bytes(previous)
        raise
    record_retraining(config, execution.get("ExecutionId"), execution.get("Status"), result)
    return {"Started": True, **answer,
            "Reason": f"{reason} on snapshot {plan.next.id[:12]} ({added} new)",
            "ExecutionId": execution.get("ExecutionId"), "Status": execution.get("Status"),
            "ModelPackageVersion": execution.get("ModelPackageVersion")}


def lineage(package: dict) -> tuple[str | None, str | None]:
    """(DataSnapshotUrl, ParentDataSnapshotUrl) a version was registered with."""
    properties = package.get("CustomerMetadataProperties") or {}
    return properties.get(DATA_SNAPSHOT_PROPERTY), properties.get(PARENT_SNAPSHOT_PROPERTY)
