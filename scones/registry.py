"""The model registry: one interface, two backends that behave the same.

`backend_for(config).registry()` gives a LocalRegistry (SQLite in the workspace) for the
embedded default and a SageMakerRegistry (the SageMaker Model Registry via boto3) on AWS.
Both speak SageMaker's shapes: `register(**CreateModelPackage fields)`, `describe(version)`
returns DescribeModelPackage's fields plus three conveniences (ModelDataUrl, Accuracy, and
locally LocalModelData), and approval follows the transitions SageMaker allows.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from datetime import datetime, timezone
from typing import Any

from scones.config import Config
from scones.errors import RegistryError, SconesError
from scones.storage import LocalObjectStore, S3ObjectStore
from scones.workspace import Workspace

APPROVED, REJECTED, PENDING = "Approved", "Rejected", "PendingManualApproval"
# CustomerMetadataProperties key of the confidence threshold train.py chose for a version
# (registered by the pipeline, handed to the workflow's filter by deployment).
CONFIDENCE_THRESHOLD_PROPERTY = "ConfidenceThreshold"
# ... and of its out-of-distribution ("not a vehicle") threshold, chosen on validation for
# <= 2 % false rejection of real photos; the endpoint answers with it (inference.py).
OOD_THRESHOLD_PROPERTY = "OodThreshold"
# CustomerMetadataProperties key of the S3 prefix of the test split a version was judged on.
TEST_DATA_PROPERTY = "TestDataUrl"
# CustomerMetadataProperties keys of a version's lineage: the data snapshot it was trained on
# (the pipeline's InputDataUrl) and the snapshot that one extends (retraining), "none" for a
# first snapshot or a plain folder (see scones/snapshots.py).
DATA_SNAPSHOT_PROPERTY = "DataSnapshotUrl"
PARENT_SNAPSHOT_PROPERTY = "ParentDataSnapshotUrl"
APPROVAL_STATUSES = (APPROVED, REJECTED, PENDING)
# Where evaluate.py puts the test-split accuracy inside evaluation.json (the pipeline's
# condition reads the same path).
ACCURACY_PATH = ("binary_classification_metrics", "accuracy", "value")


def accuracy_from_evaluation(document: bytes | str) -> float | None:
    """binary_classification_metrics.accuracy.value of an evaluation.json, None if absent."""
    try:
        node: Any = json.loads(document)
    except ValueError:
        return None
    for key in ACCURACY_PATH:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def evaluation_url(package: dict) -> str | None:
    """The S3 URL of the evaluation.json a package's ModelMetrics point to."""
    stats = (package.get("ModelMetrics") or {}).get("ModelQuality", {}).get("Statistics", {})
    url = stats.get("S3Uri")
    return url if isinstance(url, str) else None


def model_data_url(package: dict) -> str | None:
    containers = (package.get("InferenceSpecification") or {}).get("Containers") or [{}]
    return containers[0].get("ModelDataUrl")


class ModelPackageStageTests:
    """Stage-test verdicts kept in each model package's CustomerMetadataProperties (what
    Studio shows with the version): the AWS counterpart of the local StageTestRecords."""

    def __init__(self, sagemaker_client):
        self.client = sagemaker_client

    def record(self, package_arn: str, stage: str, result: dict) -> None:
        stage = stage.capitalize()
        current = self.client.describe_model_package(ModelPackageName=package_arn)
        properties = dict(current.get("CustomerMetadataProperties") or {})
        properties.update({f"{stage}Test": "Passed" if result["Passed"] else "Failed",
                           f"{stage}TestAccuracy": str(result["Accuracy"]),
                           f"{stage}TestFailureRate": str(result["FailureRate"]),
                           f"{stage}TestedAt": result["TestedAt"]})
        # the approval is restated unchanged: an update that leaves it out must not clear it
        # (moto's UpdateModelPackage does; SageMaker keeps it either way)
        approval = {key: current[key] for key in ("ModelApprovalStatus", "ApprovalDescription")
                    if current.get(key)}
        self.client.update_model_package(ModelPackageArn=package_arn,
                                         CustomerMetadataProperties=properties, **approval)

    def result(self, package: dict, stage: str) -> dict | None:
        properties = package.get("CustomerMetadataProperties") or {}
        verdict = properties.get(f"{stage.capitalize()}Test")
        if verdict is None:
            return None
        return {"Passed": verdict == "Passed",
                "Accuracy": properties.get(f"{stage.capitalize()}TestAccuracy"),
                "FailureRate": properties.get(f"{stage.capitalize()}TestFailureRate")}


def _check_transition(current: str, target: str, version: int, group: str,
                      description: str | None) -> bool:
    """Whether moving current -> target changes anything; RegistryError if not allowed."""
    if target == REJECTED and not (description or "").strip():
        raise RegistryError(f"rejecting version {version} of {group} needs a description "
                            "saying why (--description)")
    if current == target:
        return False
    if target == PENDING:
        raise RegistryError(f"version {version} of {group} is {current}: a package cannot go "
                            f"back to {PENDING}")
    return True


class LocalRegistry:
    """The Model Registry in SQLite. Versions are numbered per group like SageMaker's:
    BEGIN IMMEDIATE serialises concurrent registrations, UNIQUE(group, version) makes a
    duplicate impossible even so, and each registration is one transaction (no half rows)."""

    def __init__(self, config: Config, workspace: Workspace, store: LocalObjectStore,
                 account: str):
        self.config = config
        self.group = config.pipeline.model_package_group
        self.region = config.aws.region
        self.account = account
        self.workspace = workspace
        self.path = workspace.database_file
        self.store = store
        with closing(self._connect()) as db:
            db.execute("""
                CREATE TABLE IF NOT EXISTS model_packages (
                    group_name TEXT NOT NULL,
                    version INTEGER NOT NULL,
                    arn TEXT NOT NULL,
                    status TEXT NOT NULL,
                    approval_status TEXT NOT NULL,
                    approval_description TEXT,
                    creation_time TEXT NOT NULL,
                    last_modified_time TEXT NOT NULL,
                    local_model_data TEXT,
                    fields TEXT NOT NULL,
                    UNIQUE (group_name, version)
                )""")

    def _connect(self) -> sqlite3.Connection:
        return self.workspace.connect()

    def _arn(self, group: str, version: int) -> str:
        return (f"arn:aws:sagemaker:{self.region}:{self.account}:model-package/"
                f"{group.lower()}/{version}")

    def register(self, **fields: Any) -> dict:
        group = fields.setdefault("ModelPackageGroupName", self.group)
        status = fields.setdefault("ModelApprovalStatus", PENDING)
        if status not in APPROVAL_STATUSES:
            raise RegistryError(f"ModelApprovalStatus {status!r} is not one of "
                                f"{', '.join(APPROVAL_STATUSES)}")
        if not model_data_url(fields):
            raise RegistryError(f"registering into {group}: InferenceSpecification.Containers[0]"
                                ".ModelDataUrl is missing")
        # Stored relative to the workspace: a moved or copied workspace still finds it.
        local_model_data = self.workspace.relative(self.store.path_for(model_data_url(fields)))
        body = json.dumps(fields, default=str)
        now = _now()
        for attempt in range(20):
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                (latest,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM model_packages "
                                       "WHERE group_name = ?", (group,)).fetchone()
                version = latest + 1
                db.execute(
                    "INSERT INTO model_packages (group_name, version, arn, status, "
                    "approval_status, approval_description, creation_time, last_modified_time, "
                    "local_model_data, fields) VALUES (?, ?, ?, 'Completed', ?, ?, ?, ?, ?, ?)",
                    (group, version, self._arn(group, version), status,
                     fields.get("ApprovalDescription"), now, now, local_model_data, body))
                db.execute("COMMIT")
                return self.describe(version, group=group)
            except (sqlite3.OperationalError, sqlite3.IntegrityError) as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                busy = isinstance(exc, sqlite3.IntegrityError) or "locked" in str(exc)
                if not busy or attempt == 19:
                    raise RegistryError(f"could not register into {group} at {self.path}: "
                                        f"{exc}") from exc
                time.sleep(0.05 * (attempt + 1))
            finally:
                db.close()
        raise AssertionError("unreachable")

    def _row(self, version: int | str, group: str | None = None,
             db: sqlite3.Connection | None = None) -> sqlite3.Row:
        group = group or self.group
        number = _version_number(version, group)
        if db is None:
            with closing(self._connect()) as db:
                return self._row(version, group, db)
        row = db.execute("SELECT * FROM model_packages WHERE group_name = ? AND version = ?",
                         (group, number)).fetchone()
        if row is None:
            raise RegistryError(f"model package group {group} has no version {version} "
                                f"(registry {self.path})")
        return row

    def _describe_row(self, row: sqlite3.Row) -> dict:
        fields = json.loads(row["fields"])
        package = {
            **fields,
            "ModelPackageGroupName": row["group_name"],
            "ModelPackageVersion": row["version"],
            "ModelPackageName": row["group_name"],
            "ModelPackageArn": row["arn"],
            "ModelPackageStatus": row["status"],
            "ModelApprovalStatus": row["approval_status"],
            "ApprovalDescription": row["approval_description"],
            "CreationTime": datetime.fromisoformat(row["creation_time"]),
            "LastModifiedTime": datetime.fromisoformat(row["last_modified_time"]),
        }
        package["ModelDataUrl"] = model_data_url(package)
        package["LocalModelData"] = str(self.workspace.resolve(row["local_model_data"]))
        package["Accuracy"] = self._accuracy(package)
        return package

    def _accuracy(self, package: dict) -> float | None:
        url = evaluation_url(package)
        if not url:
            return None
        try:
            return accuracy_from_evaluation(self.store.read_bytes(url))
        except SconesError:
            return None  # evaluation.json gone from the workspace: unknown, not an error

    def describe(self, version: int | str, group: str | None = None) -> dict:
        return self._describe_row(self._row(version, group))

    def list_packages(self) -> list[dict]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM model_packages WHERE group_name = ? "
                              "ORDER BY version", (self.group,)).fetchall()
        return [self._describe_row(row) for row in rows]

    def latest(self, status: str = APPROVED) -> dict | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM model_packages WHERE group_name = ? AND "
                             "approval_status = ? ORDER BY version DESC LIMIT 1",
                             (self.group, status)).fetchone()
        return self._describe_row(row) if row else None

    def _set_status(self, version, target: str, description: str | None) -> tuple[dict, bool]:
        # Read, check and write in one write transaction: of two concurrent approvals of the
        # same version exactly one changes it (and deploys it), the other sees it Approved.
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            row = self._row(version, db=db)
            changed = _check_transition(row["approval_status"], target, row["version"],
                                        self.group, description)
            if changed:
                db.execute("UPDATE model_packages SET approval_status = ?, "
                           "approval_description = ?, last_modified_time = ? "
                           "WHERE group_name = ? AND version = ?",
                           (target, description, _now(), self.group, row["version"]))
            db.execute("COMMIT")
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.close()
        return self.describe(row["version"]), changed

    def approve(self, version, description: str | None = None) -> tuple[dict, bool]:
        return self._set_status(version, APPROVED, description)

    def reject(self, version, description: str | None = None) -> tuple[dict, bool]:
        return self._set_status(version, REJECTED, description)


class SageMakerRegistry:
    """The SageMaker Model Registry, same interface, through boto3."""

    def __init__(self, config: Config, sagemaker_client, s3_client):
        self.config = config
        self.group = config.pipeline.model_package_group
        self.client = sagemaker_client
        self.s3 = s3_client

    def _ensure_group(self, group: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.describe_model_package_group(ModelPackageGroupName=group)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("ValidationException", "ResourceNotFound"):
                raise
            self.client.create_model_package_group(
                ModelPackageGroupName=group,
                ModelPackageGroupDescription=f"{self.config.project}: "
                                             f"{' vs '.join(self.config.classes)} classifier")

    def register(self, **fields: Any) -> dict:
        group = fields.setdefault("ModelPackageGroupName", self.group)
        self._ensure_group(group)
        arn = self.client.create_model_package(**fields)["ModelPackageArn"]
        return self._describe_arn(arn)

    def _summaries(self) -> list[dict]:
        summaries = []
        for page in self.client.get_paginator("list_model_packages").paginate(
                ModelPackageGroupName=self.group):
            summaries += page["ModelPackageSummaryList"]
        return sorted(summaries, key=lambda s: s.get("ModelPackageVersion") or 0)

    def _arn_of(self, version) -> str:
        number = _version_number(version, self.group)
        from botocore.exceptions import ClientError

        try:
            summaries = self._summaries()
        except ClientError as exc:
            raise RegistryError(f"cannot list model package group {self.group}: {exc}") from exc
        for summary in summaries:
            if summary.get("ModelPackageVersion") == number:
                return summary["ModelPackageArn"]
        raise RegistryError(f"model package group {self.group} has no version {version}")

    def _describe_arn(self, arn: str) -> dict:
        package = dict(self.client.describe_model_package(ModelPackageName=arn))
        package.pop("ResponseMetadata", None)
        # Absent until first modified (and in moto): give both backends the same keys.
        package.setdefault("LastModifiedTime", package.get("CreationTime"))
        package.setdefault("ApprovalDescription", None)
        package["ModelDataUrl"] = model_data_url(package)
        package["Accuracy"] = self._accuracy(package)
        return package

    def _accuracy(self, package: dict) -> float | None:
        from botocore.exceptions import ClientError

        url = evaluation_url(package)
        if not url or not url.startswith("s3://"):
            return None
        try:
            body = S3ObjectStore(self.s3).read_bytes(url)
        except ClientError:
            return None  # not readable with these credentials: unknown, not an error
        return accuracy_from_evaluation(body)

    def describe(self, version) -> dict:
        return self._describe_arn(self._arn_of(version))

    def list_packages(self) -> list[dict]:
        return [self._describe_arn(s["ModelPackageArn"]) for s in self._summaries()]

    def latest(self, status: str = APPROVED) -> dict | None:
        matching = [s for s in self._summaries() if s.get("ModelApprovalStatus") == status]
        return self._describe_arn(matching[-1]["ModelPackageArn"]) if matching else None

    def _set_status(self, version, target: str, description: str | None) -> tuple[dict, bool]:
        arn = self._arn_of(version)
        current = self._describe_arn(arn)
        if not _check_transition(current["ModelApprovalStatus"], target,
                                 current["ModelPackageVersion"], self.group, description):
            return current, False
        update = {"ModelPackageArn": arn, "ModelApprovalStatus": target}
        if description:
            update["ApprovalDescription"] = description
        self.client.update_model_package(**update)
        return self._describe_arn(arn), True

    def approve(self, version, description: str | None = None) -> tuple[dict, bool]:
        return self._set_status(version, APPROVED, description)

    def reject(self, version, description: str | None = None) -> tuple[dict, bool]:
        return self._set_status(version, REJECTED, description)


def _version_number(version: int | str, group: str) -> int:
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise RegistryError(f"model package version must be a whole number, got {version!r} "
                            f"(group {group})") from None
    if number < 1:
        raise RegistryError(f"model package group {group} has no version {version} "
                            "(versions start at 1)")
    return number


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def jsonable(value: Any) -> Any:
    """A describe() dict made JSON-ready: datetimes as ISO 8601 strings."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
