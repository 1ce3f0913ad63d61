"""Deploy on approval: the Lambda against moto's SageMaker, the same logic against the local
control plane (state file, rollback, refusals), endpoint status, and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from lambdas import deploy_approved_model as lam
from scones.config import load_config
from scones.errors import RegistryError
from scones.backend import backend_for
from workflow.stages import (DeploymentError,
                                 deploy_model_package, endpoint_status)
from scones.local.deployment_state import EndpointStateFile
from helpers import register_model, scones

GROUP = "scones-delivery-vehicles"
ENDPOINT = "scones-delivery-vehicles"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.3-cpu-py311"


# --- the Lambda against moto ---------------------------------------------------------------

UPDATES: list[dict] = []          # UpdateEndpoint requests the stub received
FIRING_ALARMS: dict[str, str] = {}  # endpoint name -> the alarm that fires during its update

@pytest.fixture
def aws(aws_credentials, monkeypatch):
    """moto's SageMaker, plus UpdateEndpoint, which moto 5.2.5 lacks: it repoints the endpoint
    at the new config as SageMaker does once the update completes."""
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.responses import SageMakerResponse

    def update_endpoint(self):
        backend = self.sagemaker_backend
        name = self._get_param("EndpointName")
        endpoint = backend.endpoints.get(name)
        if endpoint is None:
            raise ValidationError(message=f'Could not find endpoint "{name}".')
        UPDATES.append({"EndpointName": name,
                        "DeploymentConfig": self._get_param("DeploymentConfig")})
        if name in FIRING_ALARMS:
            # what SageMaker's auto-rollback ends in: the old fleet InService on the old
            # config, the reason in FailureReason (moto cannot shift traffic)
            endpoint.failure_reason = f"rolled back: alarm {FIRING_ALARMS[name]} fired"
            return ActionResult({"EndpointArn": endpoint.arn})
        config = backend.describe_endpoint_config(self._get_param("EndpointConfigName"))
        endpoint.endpoint_config_name = config["EndpointConfigName"]
        endpoint.production_variants = endpoint._process_production_variants(
            config["ProductionVariants"])
        endpoint.data_capture_config = config.get("DataCaptureConfig")
        endpoint.last_modified_time = utcnow()
        return ActionResult({"EndpointArn": endpoint.arn})

    monkeypatch.setattr(SageMakerResponse, "update_endpoint", update_endpoint, raising=False)
    UPDATES.clear()
    FIRING_ALARMS.clear()
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(lam, "_sagemaker_client", None)  # the handler makes one under moto
    with mock_aws():
        yield boto3.client("sagemaker", region_name="us-east-1")


@pytest.fixture
def lambda_env(monkeypatch):
    env = {"ENDPOINT_NAME": ENDPOINT,
           "EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/scones-sagemaker",
           "MODEL_PACKAGE_GROUP": GROUP,
           "DATA_CAPTURE_S3_URI": "s3://scones-bucket/datacapture",
           "CAPTURE_SAMPLING_PERCENTAGE": "50",
           "INSTANCE_TYPE": "ml.m5.large"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _register(client, status="Approved", group=GROUP) -> str:
    groups = client.list_model_package_groups()["ModelPackageGroupSummaryList"]
    if group not in [g["ModelPackageGroupName"] for g in groups]:
        client.create_model_package_group(ModelPackageGroupName=group)
    return client.create_model_package(
        ModelPackageGroupName=group,
        InferenceSpecification={
            "Containers": [{"Image": IMAGE,
                            "ModelDataUrl": "s3://scones-bucket/models/model.tar.gz"}],
            "SupportedContentTypes": ["image/png"],
            "SupportedResponseMIMETypes": ["application/json"]},
        ModelApprovalStatus=status)["ModelPackageArn"]


def _event(arn, status="Approved", group=GROUP, detail_type=lam.EVENT_DETAIL_TYPE):
    return {"version": "0", "id": "e-1", "source": "aws.sagemaker", "detail-type": detail_type,
            "account": "123456789012", "region": "us-east-1",
            "detail": {"ModelPackageGroupName": group, "ModelPackageArn": arn,
                       "ModelApprovalStatus": status, "ModelPackageVersion": 1}}


def test_approval_creates_model_config_with_data_capture_and_endpoint(aws, lambda_env):
    arn = _register(aws)
    result = lam.lambda_handler(_event(arn), None)

    assert result["status"] == "deployed" and result["Action"] == "created"
    endpoint = aws.describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == result["EndpointConfigName"]
    config = aws.describe_endpoint_config(EndpointConfigName=result["EndpointConfigName"])
    assert config["DataCaptureConfig"] == {
        "EnableCapture": True, "InitialSamplingPercentage": 50,
        "DestinationS3Uri": "s3://scones-bucket/datacapture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}
    variant = config["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.m5.large" and variant["VariantName"] == "AllTraffic"
    model = aws.describe_model(ModelName=variant["ModelName"])
    assert model["Containers"][0]["ModelPackageName"] == arn
    assert model["ExecutionRoleArn"] == lambda_env["EXECUTION_ROLE_ARN"]
    assert variant["ModelName"].startswith(f"{ENDPOINT}-v1-") and len(variant["ModelName"]) <= 63


def test_second_approval_updates_the_endpoint_instead_of_creating_another(aws, lambda_env):
    first = lam.lambda_handler(_event(_register(aws)), None)
    second_arn = _register(aws)
    second = lam.lambda_handler(_event(second_arn), None)

    assert second["Action"] == "updated"
    assert second["PreviousEndpointConfigName"] == first["EndpointConfigName"]
    assert [e["EndpointName"] for e in aws.list_endpoints()["Endpoints"]] == [ENDPOINT]
    endpoint = aws.describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointConfigName"] == second["EndpointConfigName"] != first["EndpointConfigName"]
    assert second["ModelPackageVersion"] == 2
    assert len(aws.list_models()["Models"]) == 2


@pytest.mark.parametrize("change", [
    {"group": "someone-elses-group"},
    {"status": "Rejected"},
    {"status": "PendingManualApproval"},
    {"detail_type": "SageMaker Model Building Pipeline Execution Status Change"},
])
def test_events_for_other_groups_or_statuses_are_ignored(aws, lambda_env, change, caplog):
    arn = _register(aws)
    with caplog.at_level("INFO", logger=lam.__name__):
        result = lam.lambda_handler(_event(arn, **change), None)
    assert result["status"] == "ignored"
    assert "ignored event e-1" in caplog.text and result["reason"] in caplog.text
    assert aws.list_models()["Models"] == [] and aws.list_endpoints()["Endpoints"] == []


def test_event_says_approved_but_registry_no_longer_does(aws, lambda_env):
    arn = _register(aws, status="Rejected")  # rejected again before the Lambda ran
    result = lam.lambda_handler(_event(arn), None)
    assert result["status"] == "ignored" and "Rejected, not Approved" in result["reason"]
    assert aws.list_endpoints()["Endpoints"] == []


def test_busy_endpoint_is_a_named_retryable_error(aws, lambda_env):
    from moto.sagemaker.models import sagemaker_backends

    lam.lambda_handler(_event(_register(aws)), None)
    sagemaker_backends["123456789012"]["us-east-1"].endpoints[ENDPOINT].endpoint_status = "Updating"
    with pytest.raises(lam.EndpointBusy, match="is Updating"):
        lam.lambda_handler(_event(_register(aws)), None)


def test_unknown_package_and_bad_settings_are_named(aws, lambda_env, monkeypatch):
    missing = "arn:aws:sagemaker:us-east-1:123456789012:model-package/scones-delivery-vehicles/9"
    with pytest.raises(lam.ModelPackageNotFound, match="/9"):
        lam.lambda_handler(_event(missing), None)
    monkeypatch.setenv("CAPTURE_SAMPLING_PERCENTAGE", "lots")
    with pytest.raises(lam.InvalidSettings, match="CAPTURE_SAMPLING_PERCENTAGE='lots'"):
        lam.lambda_handler(_event(missing), None)
    monkeypatch.delenv("EXECUTION_ROLE_ARN")
    with pytest.raises(lam.InvalidSettings, match="EXECUTION_ROLE_ARN"):
        lam.lambda_handler(_event(missing), None)
    with pytest.raises(lam.InvalidEvent):
        lam.approved_package_arn({"source": "aws.sagemaker", "detail-type":
                                  lam.EVENT_DETAIL_TYPE, "detail": "x"}, GROUP)


def test_resource_names_fit_sagemaker_limits_and_differ_per_deployment():
    from datetime import datetime, timezone

    t = datetime(2026, 11, 24, 21, 3, 4, 567000, tzinfo=timezone.utc)
    name = lam._resource_name("e" * 70, 12, t)
    assert len(name) == 63 and name.endswith("-v12-20261124210304567")
    assert lam._resource_name("ep", 1, t) != lam._resource_name(
        "ep", 1, t.replace(microsecond=568000))


# --- the same logic on the local control plane ---------------------------------------------

@pytest.fixture
def local(tmp_path, small_model_tar):
    config = load_config("local", overrides={"local.workspace": str(tmp_path / "ws"),
                                             "monitoring.capture_sampling_percentage": 30,
                                             "deployment.prod.bake_seconds": 0})
    registry = backend_for(config).registry()
    versions = []
    for n in range(3):
        # a real model: a deployment health-checks it before the endpoint switches
        versions.append(register_model(
            config, small_model_tar.read_bytes(),
            url=f"s3://scones-local/models/{n + 1}/model.tar.gz",
            InferenceSpecification={"Containers": [{
                "Image": IMAGE, "ModelDataUrl": f"s3://scones-local/models/{n + 1}/model.tar.gz"}]},
            ModelApprovalStatus="PendingManualApproval"))
    return config, registry, versions


def test_local_deploy_writes_the_state_file_the_server_reads(local):
    config, registry, versions = local
    registry.approve(1)
    result = deploy_model_package(config, 1)

    assert result["Action"] == "created"
    stored = json.loads(EndpointStateFile.of(config).path.read_text())
    # stored relative to the workspace (a moved workspace keeps serving), read back absolute
    assert stored["LocalModelData"] == "s3/scones-local/models/1/model.tar.gz"
    state = EndpointStateFile.of(config).read()
    assert state["EndpointName"] == config.workflow.endpoint_name
    assert state["EndpointStatus"] == "InService"
    assert state["ModelPackageVersion"] == 1
    assert state["ModelPackageArn"] == versions[0]["ModelPackageArn"]
    assert state["ModelDataUrl"] == "s3://scones-local/models/1/model.tar.gz"
    assert Path(state["LocalModelData"]).is_absolute()
    assert Path(state["LocalModelData"]).read_bytes() == Path(
        registry.describe(1)["LocalModelData"]).read_bytes()
    assert state["EndpointConfigName"] == state["ModelName"] == result["EndpointConfigName"]
    assert state["DataCaptureConfig"]["EnableCapture"] is True
    assert state["DataCaptureConfig"]["InitialSamplingPercentage"] == 30
    assert state["DataCaptureConfig"]["DestinationS3Uri"] == "s3://scones-local/datacapture"
    assert state["DataCaptureConfig"]["CaptureOptions"] == [{"CaptureMode": "Input"},
                                                            {"CaptureMode": "Output"}]
    assert state["LastModifiedTime"].endswith("+00:00") and state["History"] == []
    assert not [p.name for p in EndpointStateFile.of(config).path.parent.iterdir()
                if p.name.endswith(".tmp")]


def test_newer_approval_updates_and_older_one_rolls_back(local):
    config, registry, _ = local
    registry.approve(1)
    registry.approve(2)
    deploy_model_package(config, 1)
    assert deploy_model_package(config, 2)["Action"] == "updated"
    assert endpoint_status(config)["ModelPackageVersion"] == 2

    rollback = deploy_model_package(config, 1)
    assert rollback["Action"] == "updated" and rollback["ModelPackageVersion"] == 1
    state = EndpointStateFile.of(config).read()
    assert state["ModelPackageVersion"] == 1
    assert state["LocalModelData"].endswith("models/1/model.tar.gz")
    assert [h["ModelPackageVersion"] for h in state["History"]] == [1, 2]
    assert len({h["EndpointConfigName"] for h in state["History"]} |
               {state["EndpointConfigName"]}) == 3  # every deployment its own config


def test_unapproved_or_unknown_versions_are_refused_and_nothing_changes(local):
    config, registry, _ = local
    with pytest.raises(DeploymentError, match="version 3 of scones-delivery-vehicles is "
                                              "PendingManualApproval"):
        deploy_model_package(config, 3)
    assert not EndpointStateFile.of(config).path.exists()
    registry.approve(1)
    deploy_model_package(config, 1)
    before = EndpointStateFile.of(config).path.read_bytes()
    registry.approve(2)
    registry.reject(2, "blurry photos misread")
    with pytest.raises(DeploymentError, match="is Rejected"):
        deploy_model_package(config, 2)
    with pytest.raises(RegistryError, match="no version 7"):
        deploy_model_package(config, 7)
    assert EndpointStateFile.of(config).path.read_bytes() == before


def test_missing_model_data_is_refused_before_the_state_changes(local, tmp_path):
    config, registry, _ = local
    registry.approve(1)
    Path(registry.describe(1)["LocalModelData"]).unlink()
    with pytest.raises(DeploymentError, match="version 1 .* failed its health check, nothing "
                                              "was switched: the model does not load"):
        deploy_model_package(config, 1)
    assert endpoint_status(config)["EndpointStatus"] == "NotDeployed"


def test_control_plane_answers_like_sagemaker_for_missing_things(local):
    from botocore.exceptions import ClientError

    config, registry, versions = local
    plane = backend_for(config).sagemaker()
    with pytest.raises(ClientError) as missing:
        plane.describe_endpoint(EndpointName="nope")
    assert missing.value.response["Error"]["Code"] == "ValidationException"
    assert 'Could not find endpoint "nope"' in missing.value.response["Error"]["Message"]
    with pytest.raises(ClientError, match="not found"):
        plane.describe_model_package(ModelPackageName=versions[0]["ModelPackageArn"][:-1] + "9")
    with pytest.raises(ClientError, match="Could not find endpoint"):
        plane.update_endpoint(EndpointName="nope", EndpointConfigName="x")
    assert plane.describe_model_package(
        ModelPackageName=versions[1]["ModelPackageArn"])["ModelPackageVersion"] == 2


def test_endpoint_status_on_aws_follows_endpoint_config_model_package(aws, lambda_env, tmp_path):
    config = load_config("aws", overrides={
        "aws.role_arn": "arn:aws:iam::123456789012:role/scones-sagemaker",
        "aws.bucket": "scones-bucket", "data.input_url": "s3://scones-bucket/data"})
    assert endpoint_status(config)["EndpointStatus"] == "NotDeployed"
    _register(aws)
    _register(aws)
    result = deploy_model_package(config, 2)
    assert result["Action"] == "created"
    status = endpoint_status(config)
    assert status["EndpointStatus"] == "InService" and status["ModelPackageVersion"] == 2
    assert status["EndpointConfigName"] == result["EndpointConfigName"]


# --- the CLI ---------------------------------------------------------------------------------

def _scones(*args, workspace):
    return scones(*args, workspace=workspace, timeout=120)


def test_cli_deploy_and_status(local):
    config, registry, _ = local
    workspace = config.local.workspace
    done = _scones("endpoint", "status", "--json", workspace=workspace)
    assert done.returncode == 0, done.stderr
    assert [s["EndpointStatus"] for s in json.loads(done.stdout)] == ["NotDeployed"] * 2

    refused = _scones("endpoint", "deploy", "--version", "2", workspace=workspace)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: version 2 of scones-delivery-vehicles is "
                                     "PendingManualApproval") and "Traceback" not in refused.stderr

    registry.approve(2)
    done = _scones("endpoint", "deploy", "--version", "2", workspace=workspace)
    assert done.returncode == 0, done.stderr
    assert "created prod endpoint scones-delivery-vehicles: serving version 2" in done.stdout
    done = _scones("endpoint", "status", "--stage", "prod", "--json", workspace=workspace)
    status = json.loads(done.stdout)
    assert (status["EndpointStatus"], status["ModelPackageVersion"]) == ("InService", 2)


# --- the staged story on the AWS backend (moto; UpdateEndpoint stubbed, see `aws`) ----------

PROD_ALARMS = ["scones-delivery-vehicles-invocation-5xx", "scones-delivery-vehicles-model-latency"]


def test_approval_staging_test_promote_prod_on_the_aws_backend(aws, monkeypatch):
    """The same code as locally, against moto: an approval event reaches the deploy Lambda
    (deploying to staging), a duplicate event is a no-op, an approval during an update is
    retried (SQS batch item failure) and delivered after it, promotion is refused until the
    staging test passed, prod gets blue/green guardrails, and a failing canary rolls back."""
    from workflow.stages import (PromotionRefused, deploy_lambda_environment, promote,
                                     record_stage_test)

    config = load_config("aws", overrides={
        "aws.role_arn": "arn:aws:iam::123456789012:role/scones-sagemaker",
        "aws.bucket": "scones-bucket", "data.input_url": "s3://scones-bucket/data",
        "deployment.prod.rollback_alarms": PROD_ALARMS,
        "deployment.prod.traffic_routing": "LINEAR", "deployment.prod.bake_seconds": 300})
    backend = backend_for(config)
    for key, value in deploy_lambda_environment(config).items():
        monkeypatch.setenv(key, value)
    staging = "scones-delivery-vehicles-staging"

    v1 = _register(aws)
    first = lam.lambda_handler(_event(v1), None)
    assert (first["status"], first["EndpointName"]) == ("deployed", staging)
    assert endpoint_status(config, stage="prod")["EndpointStatus"] == "NotDeployed"
    # SageMaker may send the same change twice: nothing new is created
    duplicate = lam.lambda_handler(_event(v1), None)
    assert duplicate["status"] == "unchanged" and len(aws.list_models()["Models"]) == 1

    with pytest.raises(PromotionRefused, match="has not been tested"):
        promote(config)
    result = {"Stage": "staging", "ModelPackageArn": v1, "Passed": False, "Accuracy": 0.55,
              "FailureRate": 0.0, "TestedAt": "2026-11-25T10:00:00+00:00"}
    record_stage_test(config, backend, result)
    with pytest.raises(PromotionRefused, match="failed its staging test"):
        promote(config)
    record_stage_test(config, backend, {**result, "Passed": True, "Accuracy": 0.9})
    assert aws.describe_model_package(ModelPackageName=v1)["CustomerMetadataProperties"][
        "StagingTest"] == "Passed"
    assert promote(config)["Action"] == "created"
    assert endpoint_status(config, stage="prod")["ModelPackageVersion"] == 1

    # v2 is approved while staging is mid-update: the event comes back, then is delivered
    from moto.sagemaker.models import sagemaker_backends

    endpoints = sagemaker_backends["123456789012"]["us-east-1"].endpoints
    v2 = _register(aws)
    endpoints[staging].endpoint_status = "Updating"
    batch = {"Records": [{"messageId": "m-1", "body": json.dumps(_event(v2))}]}
    assert lam.lambda_handler(batch, None) == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
    assert len(aws.list_models()["Models"]) == 2  # nothing half-made by the refused attempt
    endpoints[staging].endpoint_status = "InService"
    assert lam.lambda_handler(batch, None) == {"batchItemFailures": []}
    assert endpoint_status(config, stage="staging")["ModelPackageVersion"] == 2
    # a late, retried event for v1 does not roll staging back
    assert lam.lambda_handler(_event(v1), None)["status"] == "ignored"

    # promote v2: prod is updated with the guardrails, and its canary's alarm fires
    record_stage_test(config, backend, {**result, "ModelPackageArn": v2, "Passed": True})
    FIRING_ALARMS["scones-delivery-vehicles"] = PROD_ALARMS[0]
    assert promote(config)["Action"] == "updated"
    sent = UPDATES[-1]["DeploymentConfig"]
    assert sent == {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "LINEAR", "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 10},
                "WaitIntervalInSeconds": 300},
            "TerminationWaitInSeconds": 300},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in PROD_ALARMS]}}
    # boto3 validated that request against botocore's UpdateEndpoint model before moto saw
    # it; check the canary shape the same way
    from botocore.validate import ParamValidator

    shape = aws.meta.service_model.operation_model("UpdateEndpoint").input_shape
    canary = {**sent, "BlueGreenUpdatePolicy": {**sent["BlueGreenUpdatePolicy"],
              "TrafficRoutingConfiguration": {
                  "Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
                  "WaitIntervalInSeconds": 300}}}
    report = ParamValidator().validate({"EndpointName": "e", "EndpointConfigName": "c",
                                        "DeploymentConfig": canary}, shape)
    assert not report.has_errors(), report.generate_report()
    prod = endpoint_status(config, stage="prod")
    assert prod["ModelPackageVersion"] == 1  # rolled back: v1 serves
    assert aws.describe_endpoint(EndpointName="scones-delivery-vehicles")[
        "FailureReason"].startswith("rolled back: alarm scones-delivery-vehicles-invocation-5xx")
