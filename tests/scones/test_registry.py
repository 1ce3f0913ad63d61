"""The model registry: the same transitions on SQLite and on SageMaker (moto)."""
from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3

import pytest

from scones.config import load_config
from scones.errors import RegistryError
from scones.backend import backend_for
from scones.registry import LocalRegistry, SageMakerRegistry
from scones.storage import LocalObjectStore

BUCKET = "scones-local"
EVALUATION = {"binary_classification_metrics": {"accuracy": {"value": 0.875,
                                                             "standard_deviation": 0.02}}}


def package_fields(prefix: str = "run-1") -> dict:
    """CreateModelPackage arguments shaped as the pipeline's RegisterModel step has them."""
    return {
        "ModelPackageDescription": "test package",
        "ModelApprovalStatus": "PendingManualApproval",
        "InferenceSpecification": {
            "Containers": [{"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/x:1",
                            "ModelDataUrl": f"s3://{BUCKET}/{prefix}/model.tar.gz"}],
            "SupportedContentTypes": ["image/png"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        "ModelMetrics": {"ModelQuality": {"Statistics": {
            "ContentType": "application/json",
            "S3Uri": f"s3://{BUCKET}/{prefix}/evaluation.json"}}},
    }


@pytest.fixture
def local_config(tmp_path):
    return load_config("local", overrides={"local.workspace": str(tmp_path / "ws")})


@pytest.fixture
def local_registry(local_config):
    store = LocalObjectStore(local_config.local.workspace / "s3")
    store.write_bytes(f"s3://{BUCKET}/run-1/model.tar.gz", b"not really a tarball")
    store.write_bytes(f"s3://{BUCKET}/run-1/evaluation.json", json.dumps(EVALUATION).encode())
    return backend_for(local_config).registry()


@pytest.fixture
def sagemaker_registry(aws_credentials, tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    config = load_config("local", overrides={"local.workspace": str(tmp_path / "ws")})
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="run-1/evaluation.json",
                      Body=json.dumps(EVALUATION).encode())
        yield SageMakerRegistry(config, boto3.client("sagemaker", region_name="us-east-1"), s3)


@pytest.fixture(params=["local", "sagemaker"])
def registry(request):
    return request.getfixturevalue(f"{request.param}_registry")


def test_open_registry_picks_the_backend_from_the_environment(local_config):
    assert isinstance(backend_for(local_config).registry(), LocalRegistry)


def test_register_then_describe_has_sagemakers_fields_and_the_accuracy(registry):
    created = registry.register(**package_fields())
    assert created["ModelPackageVersion"] == 1
    described = registry.describe(1)
    assert described["ModelPackageGroupName"] == "scones-delivery-vehicles"
    assert described["ModelPackageArn"].startswith("arn:aws:sagemaker:us-east-1:")
    assert described["ModelPackageArn"].endswith(":model-package/scones-delivery-vehicles/1")
    assert described["ModelApprovalStatus"] == "PendingManualApproval"
    assert described["ModelPackageStatus"] == "Completed"
    assert described["ModelDataUrl"] == f"s3://{BUCKET}/run-1/model.tar.gz"
    assert described["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == \
        described["ModelDataUrl"]
    assert described["Accuracy"] == pytest.approx(0.875)
    assert described["CreationTime"] <= described["LastModifiedTime"]


def test_versions_count_up_and_list_is_ordered(registry):
    for _ in range(3):
        registry.register(**package_fields())
    assert [p["ModelPackageVersion"] for p in registry.list_packages()] == [1, 2, 3]


def test_approve_reject_follow_sagemakers_transitions(registry):
    registry.register(**package_fields())
    registry.register(**package_fields())
    assert registry.latest("Approved") is None

    described, changed = registry.approve(1, "looks good")
    assert changed and described["ModelApprovalStatus"] == "Approved"
    assert described["ApprovalDescription"] == "looks good"
    again, changed = registry.approve(1)
    assert not changed and again["ModelApprovalStatus"] == "Approved"

    _, changed = registry.approve(2)
    assert changed
    assert registry.latest("Approved")["ModelPackageVersion"] == 2

    with pytest.raises(RegistryError, match="description"):
        registry.reject(2, "")
    described, changed = registry.reject(2, "drifted")
    assert changed and described["ModelApprovalStatus"] == "Rejected"
    assert registry.latest("Approved")["ModelPackageVersion"] == 1
    _, changed = registry.approve(2, "second look")
    assert changed and registry.describe(2)["ModelApprovalStatus"] == "Approved"


def test_unknown_version_names_it_and_the_group(registry):
    registry.register(**package_fields())
    with pytest.raises(RegistryError, match=r"scones-delivery-vehicles.*7|7.*scones-delivery"):
        registry.describe(7)
    with pytest.raises(RegistryError, match="7"):
        registry.approve(7)
    with pytest.raises(RegistryError, match="whole number"):
        registry.describe("latest")


def test_local_registry_records_where_the_model_is_on_disk(local_registry, local_config):
    described = local_registry.register(**package_fields())
    path = local_config.local.workspace / "s3" / BUCKET / "run-1" / "model.tar.gz"
    assert described["LocalModelData"] == str(path)
    assert os.path.exists(described["LocalModelData"])


def test_accuracy_is_none_when_the_evaluation_is_missing(registry):
    registry.register(**package_fields(prefix="no-such-run"))
    assert registry.describe(1)["Accuracy"] is None


def test_local_registration_is_all_or_nothing(local_registry, local_config):
    fields = package_fields()
    fields["InferenceSpecification"]["Containers"][0].pop("ModelDataUrl")
    with pytest.raises(RegistryError, match="ModelDataUrl"):
        local_registry.register(**fields)
    bad_status = {**package_fields(), "ModelApprovalStatus": "Maybe"}
    with pytest.raises(RegistryError, match="Maybe"):
        local_registry.register(**bad_status)
    with sqlite3.connect(local_config.local.workspace / "registry.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM model_packages").fetchone() == (0,)


def _register_many(workspace: str, count: int, queue) -> None:
    config = load_config("local", overrides={"local.workspace": workspace})
    registry = backend_for(config).registry()
    queue.put([registry.register(**package_fields())["ModelPackageVersion"]
               for _ in range(count)])


def test_concurrent_registrations_get_distinct_versions(local_config):
    backend_for(local_config).registry()  # create the table before the race
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_register_many,
                               args=(str(local_config.local.workspace), 10, queue))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    versions = sum((queue.get(timeout=60) for _ in workers), [])
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sorted(versions) == list(range(1, 41))


def _approve_in_process(workspace: str, version: int, barrier, queue) -> None:
    config = load_config("local", overrides={"local.workspace": workspace})
    registry = backend_for(config).registry()
    barrier.wait(timeout=30)
    package, changed = registry.approve(version, "approved concurrently")
    queue.put((package["ModelApprovalStatus"], changed))


def test_concurrent_approvals_of_one_version_change_it_once(local_config):
    registry = backend_for(local_config).registry()
    version = registry.register(**package_fields())["ModelPackageVersion"]
    context = multiprocessing.get_context("fork")
    queue, barrier = context.Queue(), context.Barrier(4)
    workers = [context.Process(target=_approve_in_process,
                               args=(str(local_config.local.workspace), version, barrier, queue))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    outcomes = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    # Every caller sees it Approved; exactly one made the change (and would deploy it).
    assert [status for status, _ in outcomes] == ["Approved"] * 4
    assert sorted(changed for _, changed in outcomes) == [False, False, False, True]


# ------------------------------------------------- registry.sqlite under faults: named errors


def test_the_registry_is_in_wal_mode_and_reads_do_not_wait_for_a_writer(local_registry,
                                                                        local_config):
    local_registry.register(**package_fields())
    db_path = local_config.local.workspace / "registry.sqlite"
    writer = sqlite3.connect(db_path, isolation_level=None)
    try:
        assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        writer.execute("BEGIN EXCLUSIVE")  # a writer mid-transaction
        assert [p["ModelPackageVersion"] for p in local_registry.list_packages()] == [1]
    finally:
        writer.close()


LOCK_HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_lock_held_past_the_timeout_is_a_named_error_with_the_holders_pid(
        local_registry, local_config, monkeypatch):
    import subprocess
    import sys

    from scones.workspace import RegistryLockedError

    local_registry.register(**package_fields())
    monkeypatch.setenv("SCONES_SQLITE_BUSY_TIMEOUT_S", "0.5")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER,
                               str(local_config.local.workspace / "registry.sqlite")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RegistryLockedError,
                           match=rf"registry at .*registry.sqlite is locked by another process "
                                 rf"\(pid {holder.pid}\).*try again when it finishes"):
            local_registry.register(**package_fields())
        with pytest.raises(RegistryLockedError):
            local_registry.approve(1)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert local_registry.approve(1)[1] is True  # released: works again
    assert [p["ModelPackageVersion"] for p in local_registry.list_packages()] == [1]


def _damage(path, offset: int, junk: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(junk)


@pytest.mark.parametrize("damage,what", [
    (lambda p: p.write_bytes(b"this was never a database" * 100), "file is not a database"),
    (lambda p: _damage(p, 4096, b"\xff" * 4096), "integrity check failed|database disk image is malformed"),
])
def test_a_damaged_registry_is_a_named_error_saying_what_to_do(local_registry, local_config,
                                                                monkeypatch, damage, what):
    import scones.workspace
    from scones.workspace import RegistryCorruptError

    for _ in range(3):
        local_registry.register(**package_fields())
    path = local_config.local.workspace / "registry.sqlite"
    with sqlite3.connect(path) as db:  # fold the WAL in, so the damage hits real pages
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damage(path)
    monkeypatch.setattr(scones.workspace, "_CHECKED", set())  # a fresh process
    with pytest.raises(RegistryCorruptError, match=rf"registry .* is damaged \(({what})"
                                                   r".*move it aside \(`mv .*\.broken`\)"):
        backend_for(local_config).registry().list_packages()


def test_a_registry_emptied_while_an_endpoint_serves_from_it_is_a_named_error(
        local_registry, local_config):
    from scones.workspace import RegistryEmptiedError

    local_registry.register(**package_fields())
    state = local_config.local.workspace / "endpoints" / "scones-endpoint.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"ModelPackageVersion": 1, "LocalModelData": "x"}))
    (local_config.local.workspace / "registry.sqlite").write_bytes(b"")
    with pytest.raises(RegistryEmptiedError, match=r"is empty \(0 bytes\), but endpoint "
                                                   r"scones-endpoint still serves model version "
                                                   r"1 .*Restore it from a backup"):
        backend_for(local_config).registry().list_packages()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_workspace_is_a_named_error(local_registry, local_config):
    from scones.workspace import WorkspaceError

    local_registry.register(**package_fields())
    workspace = local_config.local.workspace
    paths = [workspace, *workspace.glob("registry.sqlite*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        with pytest.raises(WorkspaceError, match="read-only or not yours"):
            local_registry.register(**package_fields())
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_database_is_a_named_error(local_registry, local_config):
    # Root ignores permissions: a read-only open of the same file stands in for them.
    from scones.workspace import WorkspaceError, _RegistryConnection

    local_registry.register(**package_fields())
    path = local_config.local.workspace / "registry.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, factory=_RegistryConnection)
    db.registry_path = path
    try:
        with pytest.raises(WorkspaceError, match="read-only or not yours"):
            db.execute("DELETE FROM model_packages")
    finally:
        db.close()
