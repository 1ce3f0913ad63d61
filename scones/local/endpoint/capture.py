"""Data capture as SageMaker writes it: sampled invocations as JSON Lines under
<destination>/<endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/<file>.jsonl."""
from __future__ import annotations

import base64
import json
import random
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lambdas.deploy_approved_model import VARIANT_NAME, data_capture_config
from scones.config import Config
from scones.deploy_settings import deploy_settings
from scones.storage import LocalObjectStore, split_s3_url


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

