"""`scones ui --env aws`: the same pages read SageMaker (the Model Registry, Pipelines) and S3
through the backend. Against moto, in-process (moto's mock covers this process only)."""
from __future__ import annotations

import io
import json
import re

import pytest
from moto import mock_aws
from PIL import Image

from app.ui.security import Guard
from app.ui.server import create_app
from scones.backend import backend_for
from scones.config import load_config

BUCKET = "scones-bucket"


@pytest.fixture
def aws_studio(aws_credentials, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        config = load_config("aws", overrides={
            "aws.role_arn": "arn:aws:iam::123456789012:role/scones-sagemaker",
            "aws.bucket": BUCKET, "data.input_url": f"s3://{BUCKET}/data",
            "local.workspace": str(tmp_path / "ws")})
        backend = backend_for(config)
        backend.client("s3").create_bucket(Bucket=BUCKET)
        guard = Guard("aws-test-token")
        guard.hosts = Guard.hosts_for("127.0.0.1", 80)
        app = create_app(config, guard, ["--env", "aws"])
        client = app.test_client()
        client.set_cookie("scones_ui_token", "aws-test-token")
        yield config, backend, client, guard


def _register(config, backend, execution: str, accuracy: float) -> dict:
    s3 = backend.client("s3")
    key = f"{config.pipeline.name}/{execution}/Evaluate/output/evaluation"
    prefix = f"s3://{BUCKET}/{config.pipeline.name}/{execution}"
    s3.put_object(Bucket=BUCKET, Key=f"{key}/evaluation.json", Body=json.dumps({
        "binary_classification_metrics": {"accuracy": {"value": accuracy}},
        "custom_metrics": {"calibration": {"ece_after_calibration": {"value": 0.031}}},
    }).encode())
    png = io.BytesIO()
    Image.new("RGB", (120, 90), "navy").save(png, "PNG")
    s3.put_object(Bucket=BUCKET, Key=f"{key}/confusion_matrix.png", Body=png.getvalue())
    s3.put_object(Bucket=BUCKET, Key=f"models/{execution}/model.tar.gz", Body=b"not read here")
    return backend.registry().register(
        ModelPackageDescription="from the test",
        ModelApprovalStatus="PendingManualApproval",
        CustomerMetadataProperties={
            "ConfidenceThreshold": "0.87",
            "ParentDataSnapshotUrl": f"s3://{BUCKET}/snapshots/parent-of-{execution}/",
            "DataSnapshotUrl": f"s3://{BUCKET}/snapshots/{execution}-data/"},
        ModelMetrics={"ModelQuality": {"Statistics": {
            "ContentType": "application/json",
            "S3Uri": f"{prefix}/Evaluate/output/evaluation/evaluation.json"}}},
        InferenceSpecification={
            "Containers": [{"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/x:1",
                            "ModelDataUrl": f"s3://{BUCKET}/models/{execution}/model.tar.gz"}],
            "SupportedContentTypes": ["image/png"], "SupportedResponseMIMETypes": ["application/json"]})


def test_registry_pages_read_sagemakers_model_registry(aws_studio):
    config, backend, client, guard = aws_studio
    _register(config, backend, "exec-one", 0.81)
    _register(config, backend, "exec-two", 0.93)
    page = client.get("/registry").get_data(as_text=True)
    assert "--env aws" in page
    rows = re.findall(r'<tr data-version="(\d+)">(.*?)</tr>', page, re.S)
    assert [v for v, _ in rows] == ["2", "1"]
    second = rows[0][1]
    assert "PendingManualApproval" in second and "0.930" in second and "0.031" in second
    assert "0.870" in second and "exec-two" in second
    assert f"s3://{BUCKET}/snapshots/exec-two-data/" in second and "parent-of" not in second
    version = client.get("/registry/2").get_data(as_text=True)
    assert "Version 2" in version and "0.930" in version
    plot = client.get("/registry/2/plot/confusion_matrix.png")
    assert plot.status_code == 200 and plot.data.startswith(b"\x89PNG")
    assert client.get("/registry/2/plot/training_curves.png").status_code == 404
    compared = client.get("/registry/compare?a=1&b=2").get_data(as_text=True)
    assert "Version 1 vs 2" in compared

    # approval on AWS: SageMaker's status changes; the EventBridge rule does the deploying
    refused = client.post("/registry/2/approve", data={"description": "x"})
    assert refused.status_code == 403   # no CSRF token
    done = client.post("/registry/2/approve", data={"description": "beats v1",
                                                     "csrf_token": guard.csrf_token})
    assert done.status_code == 303
    described = backend.client("sagemaker").describe_model_package(
        ModelPackageName=backend.registry().describe(2)["ModelPackageArn"])
    assert described["ModelApprovalStatus"] == "Approved"
    assert "EventBridge rule deploys it" in client.get("/registry/2").get_data(as_text=True)


@pytest.mark.slow  # the SDK builds the definition (~15 s on 2 busy cores)
def test_pipelines_page_reads_sagemaker_pipelines(aws_studio):
    config, backend, client, _ = aws_studio
    sagemaker = backend.client("sagemaker")
    # what `pipeline run --env aws` upserts; the page draws the graph from the definition
    # the Studio builds itself, so a small one does here
    sagemaker.create_pipeline(PipelineName=config.pipeline.name, RoleArn=config.aws.role_arn,
                              PipelineDefinition=json.dumps({"Version": "2020-12-01",
                                                             "Steps": []}))
    started = sagemaker.start_pipeline_execution(
        PipelineName=config.pipeline.name,
        PipelineParameters=[{"Name": "Epochs", "Value": "3"}])
    execution_id = started["PipelineExecutionArn"].rpartition("/")[2]
    page = client.get("/pipelines").get_data(as_text=True)
    assert 'id="pipeline-graph"' in page
    for step in ("Preprocess", "Train", "Evaluate", "CheckAccuracy", "AccuracyBelowThreshold"):
        assert f'data-step="{step}"' in page
    assert f'data-execution="{execution_id}"' in page
    live = client.get("/pipelines/live").get_data(as_text=True)
    assert execution_id in live



def test_endpoints_and_monitoring_pages_read_the_account(aws_studio):
    config, backend, client, _ = aws_studio
    _register(config, backend, "exec-one", 0.81)
    backend.registry().approve(1, "for the endpoints page")
    page = client.get("/endpoints").get_data(as_text=True)
    for stage, name in (("staging", "scones-delivery-vehicles-staging"),
                        ("prod", "scones-delivery-vehicles")):
        card = page.split(f'id="endpoint-{stage}"', 1)[1].split('class="card"', 1)[0]
        assert "NotDeployed" in card and name in card
    assert '<option value="1">version 1</option>' in page  # what a rollback may choose
    monitoring = client.get("/monitoring")
    assert monitoring.status_code == 200
    assert "No monitoring run yet" in monitoring.get_data(as_text=True)
