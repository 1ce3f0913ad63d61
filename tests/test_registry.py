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
def sagemaker_registry(tmp_path, monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
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
