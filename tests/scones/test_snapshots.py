"""Data snapshots (scones/snapshots.py): content-addressed, immutable, the same on the local
object store and on S3 (moto); the pipeline's InputDataUrl changes with the data; the AWS
templates' kwargs without an input URL take the newest snapshot, or say there is none."""
from __future__ import annotations

import json
import shutil

import boto3
import pytest
from moto import mock_aws

from helpers import run_job
from scones.backend import backend_for
from scones.config import load_config
from scones.snapshots import (SnapshotError, extend_snapshot, is_snapshot_url, list_snapshots,
                              load_snapshot, newest_snapshot, snapshot_source)
from scones.storage import LocalObjectStore, S3ObjectStore

BUCKET = "scones-local"


@pytest.fixture
def store(tmp_path):
    return LocalObjectStore(tmp_path / "s3")


def test_the_same_files_give_the_same_snapshot_and_one_changed_byte_another(
        store, small_image_folder, tmp_path):
    folder = small_image_folder(per_class=5)
    first = snapshot_source(store, BUCKET, str(folder))
    assert is_snapshot_url(first.url) and first.url.endswith(f"/{first.id}/")
    assert first.counts() == {"bicycle": 5, "motorcycle": 5} and first.parent is None
    manifest = store.path_for(first.url + "manifest.json")
    written = manifest.stat().st_mtime_ns
    # a copy elsewhere: same content, same snapshot, nothing rewritten
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert snapshot_source(store, BUCKET, str(copy)).url == first.url
    assert manifest.stat().st_mtime_ns == written
    # one byte more in one image: another snapshot, another URL
    victim = sorted((copy / "bicycle").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    second = snapshot_source(store, BUCKET, str(copy))
    assert second.url != first.url
    assert [s.url for s in list_snapshots(store, BUCKET)] in (
        [first.url, second.url], [second.url, first.url])


def test_a_duplicate_image_is_kept_once_and_extending_adds_only_new_content(store,
                                                                             small_image_folder):
    folder = small_image_folder(per_class=3)
    one = sorted((folder / "bicycle").iterdir())[0]
    (folder / "bicycle" / "again.png").write_bytes(one.read_bytes())
    base = snapshot_source(store, BUCKET, str(folder))
    assert len(base.files) == 6
    extra = sorted((folder / "motorcycle").iterdir())[0].read_bytes() + b"\0"
    grown = extend_snapshot(store, BUCKET, base, [("motorcycle/new.png", extra),
                                                   ("bicycle/dup.png", one.read_bytes())])
    assert grown.parent == base.url and len(grown.files) == 7
    assert grown.counts() == {"bicycle": 3, "motorcycle": 4}
    # nothing new: the same snapshot back, no child made
    assert extend_snapshot(store, BUCKET, base, [("bicycle/dup.png", one.read_bytes())]) == base


def test_an_altered_manifest_is_refused_and_never_offered_as_the_newest(store,
                                                                       small_image_folder):
    snapshot = snapshot_source(store, BUCKET, str(small_image_folder(per_class=2)))
    path = store.path_for(snapshot.url + "manifest.json")
    manifest = json.loads(path.read_text())
    manifest["files"] = manifest["files"][1:]
    path.write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="altered"):
        load_snapshot(store, snapshot.url)
    with pytest.raises(SnapshotError, match="no data snapshot under s3://scones-local/data/"
                                            "snapshots/.*scones data snapshot"):
        newest_snapshot(store, BUCKET)


def test_preprocess_refuses_a_snapshot_whose_file_changed_after_it_was_made(
        store, small_image_folder, tmp_path):
    snapshot = snapshot_source(store, BUCKET, str(small_image_folder(per_class=10)))
    local = store.path_for(snapshot.url)
    done = run_job("preprocess.py", "--input-dir", local, "--output-dir", tmp_path / "ok")
    report = json.loads((tmp_path / "ok" / "report" / "report.json").read_text())
    assert report["snapshot"] == {"id": snapshot.id, "parent": "none"}, done.stdout
    image = sorted((local / "bicycle").iterdir())[0]
    image.write_bytes(image.read_bytes()[:-1] + b"\1")
    failed = run_job("preprocess.py", "--input-dir", local, "--output-dir", tmp_path / "bad",
                     check=False)
    assert failed.returncode == 2 and "does not match its SHA-256" in failed.stderr


@mock_aws
def test_snapshots_on_s3_behave_as_on_the_local_store(aws_credentials, store,
                                                      small_image_folder):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="scones-b")
    remote = S3ObjectStore(s3)
    folder = small_image_folder(per_class=3)
    on_s3 = snapshot_source(remote, "scones-b", str(folder))
    local = snapshot_source(store, "scones-b", str(folder))
    assert on_s3.id == local.id and on_s3.url == local.url
    assert newest_snapshot(remote, "scones-b").url == on_s3.url
    assert remote.read_bytes(on_s3.url + on_s3.files[0]["path"]) == store.read_bytes(
        local.url + local.files[0]["path"])
    # a prefix on S3 snapshots as a folder does
    for entry in on_s3.files:
        s3.put_object(Bucket="scones-b", Key=f"incoming/{entry['path']}",
                      Body=remote.read_bytes(on_s3.url + entry["path"]))
    assert snapshot_source(remote, "scones-b", "s3://scones-b/incoming/").url == on_s3.url


def test_the_pipelines_input_url_changes_with_the_data(tmp_path, small_image_folder):
    """SageMaker's step cache keys on the step's arguments (the InputDataUrl), not on the data
    behind it: the URL itself must change when the data does."""
    from pipelines.pipeline import training_data_url

    folder = small_image_folder(per_class=4)
    config = load_config("local", overrides={"local.workspace": str(tmp_path / "ws"),
                                             "data.input_url": str(folder)})
    before = training_data_url(config)
    assert before == training_data_url(config)  # unchanged data: the cache may hit
    (folder / "motorcycle" / "new.png").write_bytes(
        sorted((folder / "bicycle").iterdir())[0].read_bytes()[:-1] + b"\7")
    after = training_data_url(config)
    assert after != before and is_snapshot_url(after)
    assert load_snapshot(backend_for(config).object_store(), after).counts()["motorcycle"] == 5


@mock_aws
def test_the_templates_kwargs_without_an_input_url_take_the_newest_snapshot(
        aws_credentials, tmp_path, small_image_folder, capsys):
    """Issue 14 item 17: the AWS project templates' own get-pipeline-definition --kwargs (no
    input URL) work: InputDataUrl is the newest snapshot in default_bucket, or one error line
    saying there is none and how to make one."""
    from app.cli import get_pipeline_definition

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="sagemaker-project-p-1")
    kwargs = json.dumps({
        "region": "us-east-1", "role": "arn:aws:iam::123456789012:role/sm",
        "default_bucket": "sagemaker-project-p-1", "pipeline_name": "bikes-p-1",
        "model_package_group_name": "bikes-p-1", "base_job_prefix": "bikes-p-1",
        "sagemaker_project_name": "bikes",
        "sagemaker_project_arn": "arn:aws:sagemaker:us-east-1:123456789012:project/bikes"})
    argv = ["--kwargs", kwargs, "-f", str(tmp_path / "pipeline.json")]
    assert get_pipeline_definition.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no data snapshot under "
                            "s3://sagemaker-project-p-1/data/snapshots/"), error
    assert "data.input_url is required" not in error and "Traceback" not in error

    snapshot = snapshot_source(S3ObjectStore(s3), "sagemaker-project-p-1",
                               str(small_image_folder(per_class=2)))
    assert get_pipeline_definition.main(argv) == 0, capsys.readouterr().err
    definition = json.loads((tmp_path / "pipeline.json").read_text())
    (parameter,) = [p for p in definition["Parameters"] if p["Name"] == "InputDataUrl"]
    assert parameter["DefaultValue"] == snapshot.url
