"""IAM proven mechanically: for every role of every template, each action its code makes is
allowed by the role's own policies on the resource it is made on (see iam_proof.py for how
the actions are derived and evaluated). A planted missing permission is caught."""
from __future__ import annotations

import copy
import importlib
import json

import boto3
import pytest
from moto import mock_aws

import iam_proof
from iam_proof import ACCOUNT, REGION, Call, CallRecorder, Resolved, sagemaker_arn
from infra.deploy_state_machine import STAGES
from infra.project_template import project_template
from scones.config import load_config
from workflow.bulk import RESULTS_PREFIX

PROJECT = "scones-team1"
PROJECT_ID = "p-a1b2c3d4e5f6"
PARAMETERS = {"SageMakerProjectName": PROJECT, "SageMakerProjectId": PROJECT_ID,
              "LambdaCodeBucket": "scones-code", "MonitoringSchedule": "rate(1 hour)"}
# What Studio and CreateProject accept (^[a-zA-Z](-*[a-zA-Z0-9]){0,31}$): SageMaker writes
# such a name lower case into its ARNs, and IAM matches ARNs case-sensitively.
MIXED_CASE_PROJECT = "Scones-Team1"
CLASSES = "bicycle,motorcycle"


def _output(resolved: Resolved, name: str) -> str:
    return resolved.value(resolved.template["Outputs"][name]["Value"])


def _group(resolved: Resolved) -> str:
    """The model package group (and pipeline) the template names."""
    return _output(resolved, "ModelPackageGroupName")


def _endpoint(resolved: Resolved, stage: str) -> str:
    return _output(resolved, f"{stage.capitalize()}EndpointName")


def _package_arn(resolved: Resolved) -> str:
    return sagemaker_arn("model-package", f"{_group(resolved)}/3")


@pytest.fixture(scope="module")
def config():
    return load_config("local")


@pytest.fixture(scope="module")
def template(config):
    return project_template(config)


@pytest.fixture(scope="module")
def resolved(template):
    return Resolved(template, PARAMETERS)


def _bucket(resolved: Resolved) -> str:
    """Where images arrive and bulk runs write."""
    return (resolved.ref("ArtifactBucket") if "ArtifactBucket" in resolved.resources
            else resolved.parameters["BucketName"])


def _deploy_input(resolved: Resolved):
    package = _package_arn(resolved)
    return {"detail": {"ModelPackageArn": package},
            "package": {"Arn": package, "Version": 3, "Status": "Approved"}}


def state_machine_calls(resolved: Resolved) -> list[Call]:
    calls = []
    bucket = _bucket(resolved)
    run = f"{RESULTS_PREFIX}/run-1/"  # where workflow.bulk puts a run's files
    samples = {"DeployStateMachine": _deploy_input(resolved),
               "InferenceStateMachine": {"s3_bucket": bucket, "s3_key": "incoming/x.png"},
               "BulkStateMachine": {"bucket": bucket, "prefix": "incoming/",
                                    "manifest": {"bucket": bucket, "key": f"{run}batches.json"},
                                    "results": {"bucket": bucket, "prefix": run}}}
    for logical in resolved.of_type("AWS::StepFunctions::StateMachine"):
        calls += iam_proof.state_machine_calls(resolved, logical, samples[logical])
    return calls


# ----------------------------------------------------------------------------- Lambdas

def _png() -> bytes:
    import io

    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


def _endpoint_answer(params: dict) -> dict:
    """InvokeEndpoint's answer (moto's sagemaker-runtime cannot take a binary body, so this
    one call is answered here): one prediction per image sent."""
    import io

    from botocore.response import StreamingBody
    if "batch" in params["ContentType"]:
        count = len(json.loads(params["Body"])["images"])
        body = json.dumps({"predictions": [[0.9, 0.1]] * count}).encode()
    else:
        body = b"[0.9, 0.1]"
    return {"Body": StreamingBody(io.BytesIO(body), len(body)),
            "ContentType": "application/json"}


def _run_lambda(resolved: Resolved, logical: str, event, monkeypatch, setup=None):
    """Run the function's real handler under moto with the environment the template gives
    it; the calls it made, as its role."""
    properties = resolved.properties(logical)
    role = resolved.role_of(properties["Role"])
    for name, value in properties.get("Environment", {}).get("Variables", {}).items():
        monkeypatch.setenv(name, str(value))
    module = importlib.import_module(properties["Handler"].rsplit(".", 1)[0])
    from lambdas import clients
    clients._clients.clear()
    if hasattr(module, "_sagemaker_client"):
        monkeypatch.setattr(module, "_sagemaker_client", None)
    if setup:
        setup()
    with CallRecorder({"sagemaker:InvokeEndpoint": _endpoint_answer}) as recorder:
        result = module.lambda_handler(copy.deepcopy(event), None)
    return result, recorder.as_calls(role, f"{logical} ({properties['Handler']})")


def lambda_calls(resolved: Resolved, monkeypatch) -> list[Call]:
    """Run every Lambda of the template on a real event under moto."""
    functions = {resolved.properties(k)["Handler"].split(".")[1]: k
                 for k in resolved.of_type("AWS::Lambda::Function")}
    bucket = _bucket(resolved)
    calls: list[Call] = []
    done = set()
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="incoming/a.png", Body=_png())
        s3.put_object(Bucket=bucket, Key="incoming/b.png", Body=_png())
        seed = {"s3_bucket": bucket, "s3_key": "incoming/a.png", "image_data": "",
                "inferences": []}
        event = seed
        staging = resolved.value(resolved.template["Outputs"]["StagingEndpointName"]["Value"])
        for key in ("serialize_image_data", "classify_image", "filter_inferences"):
            if key not in functions:
                continue
            if key == "classify_image":   # the staging test's executions name staging
                _, made = _run_lambda(resolved, functions[key],
                                      {**event, "endpoint_name": staging}, monkeypatch)
                calls += made
            event, made = _run_lambda(resolved, functions[key], event, monkeypatch)
            calls += made
            done.add(key)
        if "plan_image_batches" in functions:
            run = {"bucket": bucket, "prefix": "incoming/", "batch_size": 1,
                   "tolerated_failure_percentage": 0,
                   "results": {"bucket": bucket, "prefix": f"{RESULTS_PREFIX}/run-1/"}}
            planned, made = _run_lambda(resolved, functions["plan_image_batches"], run,
                                        monkeypatch)
            calls += made
            manifest = json.loads(s3.get_object(
                Bucket=planned["manifest"]["bucket"], Key=planned["manifest"]["key"])["Body"].read())
            _, made = _run_lambda(resolved, functions["classify_image_batch"], manifest[0],
                                  monkeypatch)
            calls += made
            # a run that names the staging endpoint: the planner hands it to every batch
            staged, made = _run_lambda(resolved, functions["plan_image_batches"], {
                **run, "endpoint_name": staging,
                "results": {"bucket": bucket, "prefix": f"{RESULTS_PREFIX}/run-2/"}},
                monkeypatch)
            calls += made
            staged_batch = json.loads(s3.get_object(
                Bucket=staged["manifest"]["bucket"], Key=staged["manifest"]["key"])[
                    "Body"].read())[0]
            assert staged_batch["endpoint_name"] == staging
            _, made = _run_lambda(resolved, functions["classify_image_batch"], staged_batch,
                                  monkeypatch)
            calls += made
            _, made = _run_lambda(resolved, functions["classify_image_batch"],
                                  {**manifest[1], "failure": {"Error": "States.Timeout",
                                                              "Cause": "timed out"}},
                                  monkeypatch)
            calls += made
            _, made = _run_lambda(resolved, functions["summarize_bulk_run"],
                                  {**planned, "map_run": {}}, monkeypatch)
            calls += made
            done |= {"plan_image_batches", "classify_image_batch", "summarize_bulk_run"}
        if "deploy_approved_model" in functions:
            environment = resolved.properties(functions["deploy_approved_model"])[
                "Environment"]["Variables"]
            sagemaker = boto3.client("sagemaker", region_name=REGION)
            group = environment["MODEL_PACKAGE_GROUP"]
            sagemaker.create_model_package_group(ModelPackageGroupName=group)
            package = sagemaker.create_model_package(
                ModelPackageGroupName=group, ModelApprovalStatus="Approved",
                InferenceSpecification={
                    "Containers": [{"Image": "1.dkr.ecr.us-east-1.amazonaws.com/x:1",
                                    "ModelDataUrl": f"s3://{bucket}/model.tar.gz"}],
                    "SupportedContentTypes": ["image/png"],
                    "SupportedResponseMIMETypes": ["application/json"]})["ModelPackageArn"]
            event = {"id": "1", "source": "aws.sagemaker",
                     "detail-type": "SageMaker Model Package State Change",
                     "detail": {"ModelPackageGroupName": group, "ModelPackageArn": package,
                                "ModelApprovalStatus": "Approved"}}
            _, made = _run_lambda(resolved, functions["deploy_approved_model"], event,
                                  monkeypatch)
            calls += made
            done.add("deploy_approved_model")
    assert done == set(functions), f"no sample event for {set(functions) - done}"
    # S3 answers a missing key with 404 only to a caller that may list the bucket (403
    # otherwise, and the workflow would report ImageNotReadable for ImageNotFound)
    calls += [Call(c.role, "s3:ListBucket", c.resource.split("/")[0], c.why + " (404)")
              for c in calls if c.action == "s3:GetObject"]
    return calls


# ----------------------------------------------------------------------------- commands

def command_calls(resolved: Resolved) -> list[Call]:
    """The calls of the commands CodeBuild and the monitoring job run, as the template
    runs them (its environment, its names). Declared from the code paths named in each
    `why`: running them end to end needs a pipeline execution's artifacts and a serving
    endpoint, which moto cannot provide."""
    bucket = resolved.ref("ArtifactBucket")
    objects = f"arn:aws:s3:::{bucket}"
    group = _group(resolved)
    pipeline = sagemaker_arn("pipeline", _output(resolved, "PipelineName"))
    staging, prod = (_endpoint(resolved, s) for s in ("staging", "prod"))
    package = _package_arn(resolved)
    execution_role = resolved.attribute("SageMakerExecutionRole", "Arn")
    inference = resolved.ref("InferenceStateMachine")
    calls = []

    def declare(role, why, *pairs):
        calls.extend(Call(role, a, r, why) for a, r in pairs)

    declare("ModelBuildRole", "run-pipeline (Pipeline.upsert, start, wait; SDK code uploads)",
            ("sagemaker:CreatePipeline", pipeline), ("sagemaker:UpdatePipeline", pipeline),
            ("sagemaker:DescribePipeline", pipeline), ("sagemaker:ListTags", pipeline),
            ("sagemaker:AddTags", pipeline), ("sagemaker:StartPipelineExecution", pipeline),
            ("sagemaker:DescribePipelineExecution", f"{pipeline}/execution/abc123"),
            ("sagemaker:ListPipelineExecutionSteps", f"{pipeline}/execution/abc123"),
            ("iam:PassRole", execution_role),
            ("s3:PutObject", f"{objects}/{group}/code/preprocess.py"),
            ("s3:GetObject", f"{objects}/{group}/code/preprocess.py"),
            ("s3:ListBucket", objects))
    declare("ModelBuildRole", "buildspec build: scones data snapshot TRAINING_DATA_URL (list and "
            "read the labelled images, write the snapshot's files and manifest)",
            ("s3:ListBucket", objects),
            ("s3:GetObject", f"{objects}/data/train/bicycle/bicycle_s_000017.png"),
            ("s3:GetObject", f"{objects}/data/snapshots/ab12/manifest.json"),
            ("s3:PutObject", f"{objects}/data/snapshots/ab12/bicycle/bicycle_s_000017.png"),
            ("s3:PutObject", f"{objects}/data/snapshots/ab12/manifest.json"))
    declare("ModelBuildRole", "buildspec post_build: aws s3 cp the source for the staging test",
            ("s3:PutObject", f"{objects}/deploy/model-build-source.zip"))
    declare("StagingTestRole",
            "scones endpoint test --stage staging (workflow.stages.serving, run_stage_test, "
            "record_stage_test; workflow.run on AWS)",
            ("sagemaker:DescribeEndpoint", sagemaker_arn("endpoint", staging)),
            ("sagemaker:DescribeEndpointConfig", sagemaker_arn("endpoint-config", f"{staging}-v3")),
            ("sagemaker:DescribeModel", sagemaker_arn("model", f"{staging}-v3")),
            ("sagemaker:DescribeModelPackage", package),
            ("sagemaker:ListModelPackages", "*"),
            ("sagemaker:UpdateModelPackage", package),
            ("s3:GetObject", f"{objects}/{group}/preprocess/test/images.npz"),
            ("s3:ListBucket", objects),
            ("s3:PutObject", f"{objects}/workflow-input/run-1/00000-bicycle-000.png"),
            ("states:DescribeStateMachine", inference),
            ("states:StartExecution", inference),
            ("states:DescribeExecution",
             inference.replace(":stateMachine:", ":execution:") + ":run-1-00000"))
    declare("SageMakerExecutionRole",
            "the monitoring job: scones monitor run --env aws (which version prod serves, its "
            "baseline from the registry, the capture, the Violations metric)",
            ("sagemaker:DescribeEndpoint", sagemaker_arn("endpoint", prod)),
            ("sagemaker:DescribeEndpointConfig", sagemaker_arn("endpoint-config", f"{prod}-v3")),
            ("sagemaker:DescribeModel", sagemaker_arn("model", f"{prod}-v3")),
            ("sagemaker:DescribeModelPackage", package),
            ("sagemaker:ListModelPackages", "*"),
            ("s3:GetObject", f"{objects}/datacapture/prod/{prod}/AllTraffic/2026/12/07/00/x.jsonl"),
            ("s3:ListBucket", objects),
            ("s3:PutObject", f"{objects}/monitoring/reports/run-1/summary.json"),
            ("cloudwatch:PutMetricData", "*"))
    images = resolved.template["Mappings"]["FrameworkImageAccounts"][REGION]
    declare("SageMakerExecutionRole",
            "the training and processing jobs and the deployed model pull the framework's "
            "images (ECR, the region's Deep Learning Containers account)",
            *[(a, f"arn:aws:ecr:{REGION}:{images[scope.capitalize()]}:repository/pytorch-{scope}")
              for scope in ("training", "inference")
              for a in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                        "ecr:BatchCheckLayerAvailability")],
            ("ecr:GetAuthorizationToken", "*"))
    declare("SageMakerExecutionRole",
            "SageMaker Pipelines' default experiment config: an experiment per pipeline, a "
            "trial per execution (kept deliberately: Studio's Experiments view lists runs)",
            ("sagemaker:CreateExperiment", sagemaker_arn("experiment", group)),
            ("sagemaker:DescribeExperiment", sagemaker_arn("experiment", group)),
            ("sagemaker:CreateTrial", sagemaker_arn("experiment-trial", "abc123")),
            ("sagemaker:DescribeTrial", sagemaker_arn("experiment-trial", "abc123")),
            ("sagemaker:AssociateTrialComponent",
             sagemaker_arn("experiment-trial-component", "pipelines-abc123-train-xyz")),
            ("sagemaker:AddTags", sagemaker_arn("experiment-trial", "abc123")))
    return calls


# ----------------------------------------------------------------------------- the proof

def _report(refused: list[Call]) -> str:
    return "\n".join(f"{c.role} may not {c.action} on {c.resource} ({c.why})"
                     for c in refused)


def test_every_state_machine_call_is_allowed(resolved):
    calls = state_machine_calls(resolved)
    assert len({c.role for c in calls}) >= 2
    refused = iam_proof.refused(resolved, calls)
    assert not refused, _report(refused)


def test_every_lambda_call_is_allowed(resolved, monkeypatch, aws_credentials):
    calls = lambda_calls(resolved, monkeypatch)
    assert {c.action for c in calls} >= {"s3:GetObject", "sagemaker:InvokeEndpoint"}
    invoked = {(c.role, c.resource) for c in calls if c.action == "sagemaker:InvokeEndpoint"}
    for role in ("WorkflowLambdaRole", "BulkLambdaRole"):   # the staging test's and prod's
        assert {r for o, r in invoked if o == role} == {
            iam_proof.sagemaker_arn("endpoint", _endpoint(resolved, s)) for s in STAGES}, role
    refused = iam_proof.refused(resolved, calls)
    assert not refused, _report(refused)


def test_every_command_call_is_allowed(resolved):
    calls = command_calls(resolved)
    refused = iam_proof.refused(resolved, calls)
    assert not refused, _report(refused)


def test_every_rule_schedule_and_pipeline_delivery_is_allowed(resolved):
    calls = iam_proof.trigger_calls(resolved)
    assert {c.action for c in calls} >= {"states:StartExecution",
                                         "codepipeline:StartPipelineExecution",
                                         "sagemaker:CreateProcessingJob", "iam:PassRole",
                                         "codebuild:StartBuild", "sqs:SendMessage"}
    refused = iam_proof.refused(resolved, calls)
    assert not refused, _report(refused)


def test_every_role_of_the_template_is_proven(resolved, monkeypatch, aws_credentials):
    """No role escapes the proof: each one's code paths are derived above."""
    every = (state_machine_calls(resolved) + lambda_calls(resolved, monkeypatch)
             + command_calls(resolved) + iam_proof.trigger_calls(resolved))
    assert {c.role for c in every} == set(resolved.of_type("AWS::IAM::Role"))
    print(f"{len(set(resolved.of_type('AWS::IAM::Role')))} roles, {len(every)} calls, "
          f"{len({(c.role, c.action, c.resource) for c in every})} distinct")


def test_action_names_are_iams_and_none_is_a_wildcard(resolved):
    assert iam_proof.unknown_actions(resolved) == []


def test_a_missing_permission_is_caught(template):
    """Plant: the deploy state machine's role loses DescribeEndpoint. The proof names it."""
    planted = copy.deepcopy(template)
    for statement in (planted["Resources"]["DeployStateMachineRole"]["Properties"]
                      ["Policies"][0]["PolicyDocument"]["Statement"]):
        if isinstance(statement, dict) and "sagemaker:DescribeEndpoint" in statement.get(
                "Action", []):
            statement["Action"] = [a for a in statement["Action"]
                                   if a != "sagemaker:DescribeEndpoint"]
    resolved = Resolved(planted, PARAMETERS)
    refused = iam_proof.refused(resolved, state_machine_calls(resolved))
    assert {(c.role, c.action) for c in refused} == {
        ("DeployStateMachineRole", "sagemaker:DescribeEndpoint")}
    assert {c.resource for c in refused} == {
        sagemaker_arn("endpoint", _endpoint(resolved, stage)) for stage in STAGES}


def test_a_wrong_resource_is_caught(template):
    """Plant: the inference Lambdas may invoke only a staging endpoint, not prod."""
    from infra.deploy_state_machine import sagemaker_arn_name

    prod, staging = (f"endpoint/{sagemaker_arn_name(f'-{s}')}" for s in ("prod", "staging"))
    assert prod in json.dumps(template)
    planted = json.loads(json.dumps(template).replace(prod, staging))
    resolved = Resolved(planted, PARAMETERS)
    calls = [Call("WorkflowLambdaRole", "sagemaker:InvokeEndpoint",
                  sagemaker_arn("endpoint", _endpoint(resolved, "prod")), "planted")]
    assert iam_proof.refused(resolved, calls) == calls


def test_an_unknown_action_name_is_caught(template):
    planted = copy.deepcopy(template)
    planted["Resources"]["DeployStateMachineRole"]["Properties"]["Policies"][0][
        "PolicyDocument"]["Statement"][0]["Action"].append("sagemaker:DescribeEndPoints")
    assert any("DescribeEndPoints" in p
               for p in iam_proof.unknown_actions(Resolved(planted, PARAMETERS)))


def test_a_mixed_case_project_name_is_allowed_every_call(template, monkeypatch,
                                                        aws_credentials):
    """A project name Studio accepts (Scones-Team1): SageMaker lower-cases it in the ARNs
    of every resource named after it, so the roles' ARN patterns must match those."""
    parameter = template["Parameters"]["SageMakerProjectName"]
    import re
    assert re.fullmatch(parameter["AllowedPattern"], MIXED_CASE_PROJECT)
    assert parameter["MaxLength"] >= 32
    resolved = Resolved(template, {**PARAMETERS, "SageMakerProjectName": MIXED_CASE_PROJECT})
    every = (state_machine_calls(resolved) + lambda_calls(resolved, monkeypatch)
             + command_calls(resolved) + iam_proof.trigger_calls(resolved))
    refused = iam_proof.refused(resolved, every)
    print(f"{MIXED_CASE_PROJECT}: {len(refused)} of {len(every)} derived calls refused")
    assert not refused, _report(refused)
