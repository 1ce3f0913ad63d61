"""Data capture as SageMaker writes it: sampled invocations as JSON Lines under
<destination>/<endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/<file>.jsonl."""
from __future__ import annotations

import base64
import json
import os
import random
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lambdas.deploy_approved_model import VARIANT_NAME, data_capture_config
from scones.config import Config
from scones.deploy_settings import deploy_settings
from scones.storage import LocalObjectStore, split_s3_url
from scones.workspace import Workspace


def default_capture_config(config: Config) -> dict:
    """Data capture when no deployment configured it: what a deployment would configure (the
    deploy Lambda's own DataCaptureConfig for this project's settings)."""
    return data_capture_config(deploy_settings(config))



class DataCaptureWriter:
    """Appends SageMaker data-capture records, one file per hour, laid out as in S3:
    <DestinationS3Uri>/<endpoint>/AllTraffic/YYYY/MM/DD/HH/<MM-SS-mmm>-<uuid>.jsonl."""

    def __init__(self, store: LocalObjectStore, endpoint_name: str):
        self.store = store
        self.endpoint_name = endpoint_name
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str], Path] = {}  # (destination, hour) -> open file

    def capture(self, capture_config: dict, body: bytes, content_type: str,
                output: bytes, output_type: str, when: datetime | None = None,
                inference_id: str | None = None, model_version: int | None = None,
                stage: str | None = None, package_arn: str | None = None) -> Path | None:
        """Append one record. inference_id: the caller's InvokeEndpoint InferenceId (a fresh
        one when absent, so ground truth can always be merged by it); model_version, stage
        and package_arn say which model answered, so checks can be split by version."""
        if not capture_config.get("EnableCapture"):
            return None
        percentage = float(capture_config.get("InitialSamplingPercentage", 100))
        if random.random() * 100 >= percentage:
            return None
        modes = {o.get("CaptureMode") for o in capture_config.get("CaptureOptions") or
                 [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}
        when = when or datetime.now(timezone.utc)
        capture: dict[str, Any] = {}
        if "Input" in modes:
            capture["endpointInput"] = {
                "observedContentType": content_type, "mode": "INPUT",
                "data": base64.b64encode(body).decode("ascii"), "encoding": "BASE64"}
        if "Output" in modes:
            media_type = output_type.split(";")[0].strip()
            header = capture_config.get("CaptureContentTypeHeader")
            # SageMaker stores text as-is only for the content types the config lists;
            # without that list we do so for JSON, the classifier's output.
            is_json = (media_type in header.get("JsonContentTypes", []) if header
                       else media_type.endswith("json"))
            capture["endpointOutput"] = {
                "observedContentType": output_type, "mode": "OUTPUT",
                "data": output.decode("utf-8") if is_json
                else base64.b64encode(output).decode("ascii"),
                "encoding": "JSON" if is_json else "BASE64"}
        record = {
            "captureData": capture,
            "eventMetadata": {
                "eventId": str(uuid.uuid4()),
                "inferenceId": inference_id or str(uuid.uuid4()),
                "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),  # SageMaker's format
                # Not in SageMaker's records (an endpoint variant there names the model);
                # here one endpoint serves successive versions, so each record says which.
                "modelVersion": model_version,
                "modelPackageArn": package_arn,
                "stage": stage,
            },
            "eventVersion": "0",
        }
        line = json.dumps(record, separators=(",", ":")) + "\n"
        destination = capture_config.get("DestinationS3Uri", "").rstrip("/")
        split_s3_url(destination)  # a malformed destination is a StorageError, not a crash
        hour = when.strftime("%Y/%m/%d/%H")
        with self._lock:
            path = self._files.get((destination, hour))
            if path is None:
                name = f"{when:%M-%S}-{when.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
                path = self.store.path_for(
                    f"{destination}/{self.endpoint_name}/{VARIANT_NAME}/{hour}/{name}")
                path.parent.mkdir(parents=True, exist_ok=True)
                self._files[(destination, hour)] = path
            with path.open("a", encoding="utf-8") as out:
                out.write(line)  # one write per record: a reader never sees half a line
        return path


class CaptureDrops:
    """Capture records the endpoint could not write (a full disk, a read-only capture
    folder): counted, never a failed prediction. The count is kept in
    <workspace>/endpoints/capture/<endpoint>.json ({"DroppedCaptureRecords", "LastError",
    "LastDropTime"}, rewritten at most once a second and at stop) for `endpoint status`,
    and sent on every /ping answer (server.DROPPED_CAPTURE_HEADER)."""

    WRITE_INTERVAL_S = 1.0

    def __init__(self, workspace: Workspace, endpoint_name: str):
        self.path = workspace.endpoints_dir / "capture" / f"{endpoint_name}.json"
        self.count = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._written_count = 0
        self._written_at = 0.0

    def dropped(self, exc: BaseException) -> None:
        with self._lock:
            self.count += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.count == 1:
                print(f"warning: data capture failed ({self.last_error}); records are "
                      f"dropped and counted in {self.path}, predictions still answered",
                      file=sys.stderr)
            if time.monotonic() - self._written_at >= self.WRITE_INTERVAL_S:
                self._write()

    def flush(self) -> None:
        with self._lock:
            if self.count != self._written_count:
                self._write()

    def _write(self) -> None:
        self._written_at = time.monotonic()
        record = {"DroppedCaptureRecords": self.count, "LastError": self.last_error,
                  "LastDropTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record) + "\n")
            tmp.replace(self.path)
            self._written_count = self.count
        except OSError:
            pass  # the same full disk: the count still goes out on /ping


def read_capture_drops(workspace: Workspace, endpoint_name: str) -> dict:
    """What CaptureDrops last wrote for the endpoint ({} when nothing was dropped)."""
    try:
        return json.loads((workspace.endpoints_dir / "capture" /
                           f"{endpoint_name}.json").read_text())
    except (OSError, ValueError):
        return {}
