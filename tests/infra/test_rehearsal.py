"""The README's AWS road, rehearsed in order against moto (issue 14, "What to build" 4).

    1. `scones infra package`: the real command, its bundle uploaded to a (moto) bucket;
    2. the stack: every resource moto's CloudFormation implements is created by moto's
       CloudFormation from the packaged template, with the packaged parameters.json (the
       deployable part: the resources whose type moto models and whose Ref/GetAtt/Sub reach
       only such resources; `deployable_part`). The rest is named here (STATIC_ONLY) and is
       proven statically elsewhere: cfn-lint and checkov (test_project_template.py), the
       roles' policies against every call (test_iam_proof.py), the deploy and bulk state
       machines' definitions (test_deploy_flow.py);
    3. CodeBuild's buildspecs, every command run in a shell with the environment the
       template gives that CodeBuild project (and CodeBuild's own variables), against the
       project stack on moto served on 127.0.0.1 (tests/infra/project_on_moto.py): the model
       build (codebuild-buildspec.yml: run-pipeline upserts and starts the pipeline, the
       source is published for the staging test), then the staging test (the template's
       inline buildspec, its StagingTestCommand with the deploy state machine's overrides)
       on the project's real names, through the stack's inference state machine and
       Lambdas; it passes on a right model and fails the build on a wrong one. `pip install`
       lines run with --dry-run --no-index (offline: checked satisfiable, not executed);
    4. the approval event: SageMaker's "Model Package State Change" event, matched by moto's
       EventBridge against the stack's own ModelApprovedRule pattern;
    5. the deploy state machine in moto's Step Functions interpreter, started by that
       event: staging, test, manual approval token, prod (test_project_template._Deployer);
    6. the promoted version's own ConfidenceThreshold (registry metadata) set by that
       state machine on the prod workflow's Lambdas, and applied by the filter Lambda's
       real handler with the environment moto's Lambda then holds;
    7. a bulk run on the project stack: `scones workflow run --env aws --prefix` with the
       stack's names runs the stack's bulk state machine (its Distributed Map over the
       planned batches, its three Lambdas) in moto's interpreter, served on 127.0.0.1 as
       in step 3; one result per image.

The project's name is one Studio accepts in mixed case (Scones-Team1): SageMaker lower-cases
it in ARNs, so every name the stack, the buildspecs and the state machines use must agree.

Stubs (what moto lacks):
  - moto's CloudFormation does not implement CodeBuild, CodePipeline, SageMaker model
    package groups, CloudWatch alarms, EventBridge Scheduler, the SQS/SNS/S3 policies nor
    IAM Policy resources: those are STATIC_ONLY, never created;
  - SageMaker UpdateEndpoint (absent from moto) and the staging test's CodeBuild task
    (moto has no CodeBuild builds): _Deployer's stubs, kept as they are; moto's aws-sdk
    tasks leave boto3's datetimes in the state, which moto then cannot serialise: they are
    made text, as Step Functions hands them on (_timestamps_as_text);
  - the Lambdas of step 6 are created with a placeholder zip and never invoked by moto
    (moto's Lambda runs code in Docker); the filter's real handler runs in-process;
  - step 3: InvokeEndpoint (a stand-in model), ListPipelineExecutionSteps, the state
    machines' definitions moto's CloudFormation drops, and what the pipeline and the deploy
    state machine would have made (a registered version with its test split, staging's
    model, config and endpoint): tests/infra/project_on_moto.py lists them. The AWS CLI
    (`aws s3 cp` in post_build) is this machine's, pointed at moto by AWS_ENDPOINT_URL (a
    boto3 stand-in for that one command where no AWS CLI is installed).

  - step 7: the model behind prod (the same stand-in) and prod's deployment (as the deploy
    state machine names it); moto runs the Distributed Map's children as STANDARD (the
    stack deploys them EXPRESS; scones.local.stepfunctions_engine), and its ResultWriter is
    not exercised by the project (results are the run's own JSON Lines).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import numpy as np
import pytest
import yaml
from moto import mock_aws

from helpers import scones
from iam_proof import Resolved, evaluate
from test_project_template import _Deployer  # the deploy state machine in moto, reused

# A name as Studio's CreateProject accepts it: SageMaker lower-cases it in ARNs (step 3's
# commands run as roles whose policies must still match; tests/infra/test_iam_proof.py)
PROJECT = {"name": "Scones-Team1", "id": "p-a1b2c3d4e5f6"}
CODE_BUCKET = "scones-team1-code"
REGION = "us-east-1"
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """Step 1: `scones infra package`, the real command, once for the steps that need it."""
    out = tmp_path_factory.mktemp("rehearsal") / "bundle"
    packaged = scones("infra", "package", "--out", str(out), "--bucket", CODE_BUCKET,
                      "--project-name", PROJECT["name"], "--project-id", PROJECT["id"])
    assert packaged.returncode == 0, packaged.stderr
    return out

# What moto's CloudFormation (5.2.5) cannot create, and where each is proven instead.
STATIC_ONLY = {
    "ArtifactBucketPolicy", "DeadLetterQueuePolicy", "NotificationTopicPolicy",
    "SageMakerExecutionRolePassSelf", "MonitoringJobPolicy",       # policies: iam proof
    "DeadLetterAlarm", "DeployFailedAlarm", "DriftAlarm", "ProdInvocation5xxAlarm",
    "ProdModelLatencyAlarm", "StagingInvocation5xxAlarm", "StagingModelLatencyAlarm",
    "ModelBuildPipeline", "ModelBuildPipelineRole", "ModelBuildProject",
    "ModelBuildSourceRule", "ModelBuildSourceRuleRole", "StagingTestProject",
    "ModelPackageGroup", "MonitoringJobSchedule", "RetrainingSchedule",
    "NotificationEmailSubscription",
    # they reference a resource above (GetAtt/Ref), so moto cannot create them either
    "DeployStateMachine", "DeployStateMachineRole", "DriftAlarmRetrainRule",
    "ModelApprovedRule", "ModelApprovedRuleRole",
    "NewDataRule", "RetrainingRole",   # retraining starts the model build (CodePipeline)
}


def _references(node):
    """The logical names a node's Ref, Fn::GetAtt and Fn::Sub reach."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                yield value
            elif key == "Fn::GetAtt":
                yield value[0] if isinstance(value, list) else value.split(".")[0]
            elif key == "Fn::Sub":
                text, variables = (value, {}) if isinstance(value, str) else value
                yield from (m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text))
                yield from _references(variables)
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def deployable_part(template: dict) -> dict:
    """The template restricted to what moto's CloudFormation can create: resources of a
    type it models whose references stay inside that set; outputs likewise."""
    from moto.cloudformation.parsing import get_model_map

    resources, modelled = template["Resources"], get_model_map()
    kept = {k for k, r in resources.items() if r["Type"] in modelled}
    while True:
        unreachable = {k for k in kept
                       if any(r in resources and r not in kept for r in _references(resources[k]))}
        if not unreachable:
            break
        kept -= unreachable
    inside = lambda node: all(r not in resources or r in kept for r in _references(node))  # noqa: E731
    return {**template, "Resources": {k: v for k, v in resources.items() if k in kept},
            "Outputs": {k: v for k, v in template.get("Outputs", {}).items() if inside(v)}}


@pytest.mark.slow
def test_step_1_2_package_then_the_stack_from_its_template_and_parameters(
        bundle, aws_credentials):
    out = bundle
    template_url = json.loads((out / "package.json").read_text())["template_url"]
    parameters = json.loads((out / "parameters.json").read_text())
    uploads = json.loads((out / "uploads.json").read_text())
    template = json.loads((out / "sagemaker-project.json").read_text())

    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=CODE_BUCKET)
        for url, path in uploads.items():   # what the README's `aws s3 cp` lines do
            bucket, _, key = url.removeprefix("s3://").partition("/")
            s3.upload_file(path, bucket, key)
        assert template_url.endswith(next(u for u in uploads if u.endswith(
            "sagemaker-project.json")).split("/", 3)[3])

        part = deployable_part(template)
        assert set(template["Resources"]) - set(part["Resources"]) == STATIC_ONLY
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        cloudformation.create_stack(StackName="Scones-Team1", TemplateBody=json.dumps(part),
                                    Parameters=parameters, Capabilities=["CAPABILITY_IAM"])
        stack = cloudformation.describe_stacks(StackName="Scones-Team1")["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        created = {r["LogicalResourceId"]: r for r in cloudformation.list_stack_resources(
            StackName="Scones-Team1")["StackResourceSummaries"]
            if r["LogicalResourceId"]}   # moto lists a resource whose condition is off as ''
        given = {p["ParameterKey"]: p["ParameterValue"] for p in parameters}
        conditioned_in = Resolved(template, given).resources   # as CloudFormation decides
        assert set(created) == set(part["Resources"]) & set(conditioned_in)
        assert len(created) >= 28
        assert all(r["ResourceStatus"] == "CREATE_COMPLETE" for r in created.values())
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        assert outputs["ArtifactBucketName"] == f"sagemaker-project-{PROJECT['id']}"
        assert outputs["ModelPackageGroupName"] == f"{PROJECT['name']}-{PROJECT['id']}"

        # the Lambdas run the packaged zips from the uploaded keys
        lambdas = boto3.client("lambda", region_name=REGION)
        prefix = next(p["ParameterValue"] for p in parameters
                      if p["ParameterKey"] == "LambdaCodeKeyPrefix")
        for logical, resource in part["Resources"].items():
            if resource["Type"] == "AWS::Lambda::Function":
                name = created[logical]["PhysicalResourceId"]
                function = lambdas.get_function(FunctionName=name)
                assert function["Configuration"]["Runtime"].startswith("python3")
                key = resource["Properties"]["Code"]["S3Key"]["Fn::Sub"].replace(
                    "${LambdaCodeKeyPrefix}", prefix)
                assert f"s3://{CODE_BUCKET}/{key}" in uploads, key
        machines = {m["name"] for m in boto3.client(
            "stepfunctions", region_name=REGION).list_state_machines()["stateMachines"]}
        assert machines == {"Scones-Team1-inference", "Scones-Team1-inference-bulk"}
        assert s3.head_bucket(Bucket=outputs["ArtifactBucketName"])


# ----------------------------------------------------------------------------- step 3

def _source_tree(dest: Path) -> Path:
    """What CodePipeline hands CodeBuild: the repository's files (tracked and not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _offline(command: str) -> str:
    """A buildspec command as it runs here. `pip install ...` cannot download offline: it
    runs with --dry-run --no-index, so it still fails unless what it asks for is installed
    and satisfies its constraints (here, as in CodeBuild, the project's venv stands for the
    image's python). Every other command runs as written."""
    if command.startswith("pip install "):
        return command.replace("pip install ", "pip install --dry-run --no-index "
                                               "--no-build-isolation -q ", 1)
    return command


def run_buildspec(spec: dict, cwd: Path, environment: dict,
                  phases=("install", "pre_build", "build", "post_build")
                  ) -> subprocess.CompletedProcess:
    """Every phase's commands in one shell, in order, as CodeBuild runs a 0.2 buildspec
    (one shell session: exports carry on; the first failing command fails the build)."""
    script = "\n".join(_offline(c) for phase in phases
                       for c in spec["phases"].get(phase, {}).get("commands", []))
    # the project's commands from the source tree, as `pip install .` would give them; the
    # AWS CLI the CodeBuild image has: this machine's, else a stand-in for `aws s3 cp`
    path = f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    if shutil.which("aws", path=path) is None:
        stand_in = cwd.parent / "aws-cli"
        stand_in.mkdir(exist_ok=True)
        (stand_in / "aws").write_text(
            f"#!{sys.executable}\nimport sys, boto3\nservice, command, source, target = "
            "sys.argv[1:5]\nassert (service, command) == ('s3', 'cp'), sys.argv\n"
            "bucket, _, key = target.removeprefix('s3://').partition('/')\n"
            "boto3.client('s3').upload_file(source, bucket, key)\n")
        (stand_in / "aws").chmod(0o755)
        path = f"{stand_in}:{path}"
    return subprocess.run(["bash", "-ec", script], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **environment, "PATH": path,
                                            "PYTHONPATH": str(cwd), "HOME": str(cwd.parent),
                                            "CODEBUILD_SRC_DIR": str(cwd),
                                            "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})


def _held_back_split(sample_data_dir: Path, per_class: int) -> tuple[bytes, list[bytes]]:
    """A test split as Preprocess writes it (data.npz: images, labels, class_names) of real
    images; and each image as the staging test will send it (scones.test_split.png_bytes)."""
    from PIL import Image

    from scones.test_split import png_bytes

    classes = sorted(p.name for p in sample_data_dir.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((sample_data_dir / name).glob("*.png"))[:per_class]:
            images.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8))
            labels.append(label)
    out = io.BytesIO()
    np.savez(out, images=np.stack(images), labels=np.array(labels),
             class_names=np.array(classes))
    return out.getvalue(), [png_bytes(i) for i in images]


@pytest.mark.slow
def test_step_3_codebuilds_buildspecs_run_literally(bundle, tmp_path, sample_data_dir):
    """The model build's buildspec (codebuild-buildspec.yml, as the template names it), then
    the staging test's (inline in the template), each command run in a shell with the
    environment the template gives that CodeBuild project, against the project stack on
    moto (tests/infra/project_on_moto.py says what is stubbed); pip lines are checked, not
    executed (_offline)."""
    from project_on_moto import ProjectOnMoto

    with ProjectOnMoto(bundle, stack_name=PROJECT["name"]) as aws:
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        s3 = boto3.client("s3", region_name=REGION)
        # ---- the model build: CodePipeline's source -> CodeBuild, on the labelled images
        # the team put under TrainingDataPrefix
        prefix = aws.resolved.parameters["TrainingDataPrefix"]
        labelled = sorted(sample_data_dir.glob("*/*.png"))[:3] + sorted(
            sample_data_dir.glob("*/*.png"))[-3:]
        for path in labelled:
            s3.put_object(Bucket=aws.bucket, Key=f"{prefix}{path.parent.name}/{path.name}",
                          Body=path.read_bytes())
        build = aws.resolved.properties("ModelBuildProject")
        spec = yaml.safe_load((REPO / build["Source"]["BuildSpec"]).read_text())
        source = _source_tree(tmp_path / "model-build" / "src")
        built = run_buildspec(spec, source, aws.codebuild_environment("ModelBuildProject"))
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        pipeline = aws.output("PipelineName")
        assert pipeline == f"{PROJECT['name']}-{PROJECT['id']}"
        described = sagemaker.describe_pipeline(PipelineName=pipeline)
        definition = json.loads(described["PipelineDefinition"])
        assert {s["Name"] for s in definition["Steps"]} >= {"Preprocess", "Train"}
        # the pipeline's input is a snapshot of those images, not the prefix itself
        # (SageMaker's step cache keys on the URL, not on the data behind it)
        from scones.snapshots import is_snapshot_url
        (input_url,) = [p["DefaultValue"] for p in definition["Parameters"]
                        if p["Name"] == "InputDataUrl"]
        assert is_snapshot_url(input_url), input_url
        snapshot = [o["Key"] for o in s3.list_objects_v2(
            Bucket=aws.bucket, Prefix=input_url.split("/", 3)[3])["Contents"]]
        assert sum(k.endswith(".png") for k in snapshot) == len(labelled), snapshot
        executions = sagemaker.list_pipeline_executions(PipelineName=pipeline)[
            "PipelineExecutionSummaries"]
        assert len(executions) == 1, executions
        assert {t["Key"]: t["Value"] for t in sagemaker.list_tags(
            ResourceArn=described["PipelineArn"])["Tags"]}["sagemaker:project-id"] == PROJECT["id"]
        # post_build published the code the staging test will run in
        test_project = aws.resolved.properties("StagingTestProject")
        bucket, _, key = test_project["Source"]["Location"].partition("/")
        assert bucket == aws.bucket
        published = s3.get_object(Bucket=bucket, Key=key)["Body"].read()

        # ---- what the pipeline and the deploy state machine would have made meanwhile
        split, sent = _held_back_split(sample_data_dir, per_class=4)
        split_url = f"s3://{aws.bucket}/{pipeline}/run-1/Preprocess/output/test"
        s3.put_object(Bucket=aws.bucket, Key=f"{pipeline}/run-1/Preprocess/output/test/data.npz",
                      Body=split)
        package = aws.register_version(CustomerMetadataProperties={"TestDataUrl": split_url})
        settings = aws.serve("staging", package)
        assert settings["ResourceName"] == f"{PROJECT['name']}-{PROJECT['id']}-staging-v1"
        deploy = aws.resolved.properties("DeployStateMachine")["Definition"]["States"]
        labels = np.load(io.BytesIO(split))["labels"]
        for image, label in zip(sent, labels):   # the stand-in model knows every image
            aws.knows(image, int(label))

        # ---- the staging test: the deploy state machine's StartBuild, its overrides
        task = deploy["StagingTest"]["Parameters"]
        overrides = evaluate({v["Name"]: v for v in task["EnvironmentVariablesOverride"]},
                             {"package": {"Arn": package}, "settings": {"staging": settings}}, {})
        environment = {**aws.codebuild_environment("StagingTestProject"),
                       **{name: v["Value"] for name, v in overrides.items()}}
        test_source = tmp_path / "staging-test" / "src"
        with zipfile.ZipFile(io.BytesIO(published)) as archive:
            archive.extractall(test_source)
        spec = yaml.safe_load(test_project["Source"]["BuildSpec"])
        tested = run_buildspec(spec, test_source, environment)
        assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
        recorded = sagemaker.describe_model_package(ModelPackageName=package)[
            "CustomerMetadataProperties"]
        assert (recorded["StagingTest"], recorded["StagingTestAccuracy"]) == ("Passed", "1.0")
        assert recorded["TestDataUrl"] == split_url

        # the same build fails when staging answers wrongly (the stand-in model swaps)
        for image, label in zip(sent, labels):
            aws.knows(image, 1 - int(label))
        failing = run_buildspec(spec, test_source, environment, phases=("build",))
        assert failing.returncode != 0, failing.stdout[-2000:]
        assert "Traceback" not in failing.stderr, failing.stderr[-3000:]
        assert sagemaker.describe_model_package(ModelPackageName=package)[
            "CustomerMetadataProperties"]["StagingTest"] == "Failed"


def test_step_4_the_approval_event_matches_the_stacks_rule(aws_credentials):
    from infra.project_template import project_template
    from scones.config import load_config

    resolved = Resolved(project_template(load_config("local")),
                        {"SageMakerProjectName": PROJECT["name"],
                         "SageMakerProjectId": PROJECT["id"]})
    pattern = resolved.properties("ModelApprovedRule")["EventPattern"]
    group = f"{PROJECT['name']}-{PROJECT['id']}"
    event = {"id": "1", "account": "123456789012", "time": "2026-12-07T16:00:00Z",
             "region": REGION, "resources": [], "source": "aws.sagemaker",
             "detail-type": "SageMaker Model Package State Change",
             "detail": {"ModelPackageGroupName": group, "ModelApprovalStatus": "Approved",
                        "ModelPackageArn": f"arn:aws:sagemaker:{REGION}:123456789012:"
                                           f"model-package/{group}/1"}}
    with mock_aws():   # the rule delivers to a queue standing in for the state machine
        events = boto3.client("events", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        queue = sqs.create_queue(QueueName="deploy-starts")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        events.put_rule(Name="model-approved", EventPattern=json.dumps(pattern))
        events.put_targets(Rule="model-approved", Targets=[{"Id": "q", "Arn": queue_arn}])
        others = [{**event["detail"], "ModelApprovalStatus": "Rejected"},
                  {**event["detail"], "ModelPackageGroupName": "someone-elses"}]
        for detail in [event["detail"], *others]:
            events.put_events(Entries=[{"Source": event["source"],
                                        "DetailType": event["detail-type"],
                                        "Detail": json.dumps(detail)}])
        delivered = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
        assert [json.loads(m["Body"])["detail"] for m in delivered] == [event["detail"]]


@pytest.mark.slow
def test_step_5_the_deploy_state_machine_staging_test_approval_prod():
    from infra.project_template import project_template
    from scones.config import load_config

    with _Deployer(project_template(load_config("local"))) as aws:
        version = aws.approved_version()
        waiting = aws.settle(aws.start(version))
        assert waiting["status"] == "RUNNING"
        assert {"StagingCreateEndpoint", "StagingTest"} <= set(waiting["entered"])
        assert aws.serving("staging") == "bikes-p-abc123-staging-v1"
        token = aws.approval_token()
        assert token["modelPackageArn"] == version
        aws.sfn.send_task_success(taskToken=token["taskToken"], output="{}")
        done = aws.settle(waiting["executionArn"], to_end=True)
        assert done["status"] == "SUCCEEDED" and done["entered"][-1] == "DeployedToProd"
        assert aws.serving("prod") == "bikes-p-abc123-prod-v1"


@pytest.mark.slow
def test_step_6_prod_applies_the_promoted_versions_own_threshold(monkeypatch):
    """The version's ConfidenceThreshold (registry metadata) reaches the prod filter Lambda's
    environment through the deploy state machine, and the filter's real handler applies it:
    an inference the default 0.8 would pass is refused at the version's 0.93."""
    from infra.project_template import project_template
    from lambdas import filter_inferences
    from lambdas.errors import ThresholdConfidenceNotMet
    from scones.config import load_config

    with _Deployer(project_template(load_config("local")), workflow=True) as aws:
        assert "bikes-filter-inferences" in aws.threshold_functions
        version = aws.approved_version(
            CustomerMetadataProperties={"ConfidenceThreshold": "0.93"})
        waiting = aws.settle(aws.start(version))
        aws.sfn.send_task_success(taskToken=aws.approval_token()["taskToken"], output="{}")
        done = aws.settle(waiting["executionArn"], to_end=True)
        assert done["status"] == "SUCCEEDED", done
        assert "ProdApplyThreshold1" in done["entered"]
        lambdas = boto3.client("lambda", region_name=REGION)
        environment = {name: lambdas.get_function_configuration(FunctionName=name)[
            "Environment"]["Variables"] for name in aws.threshold_functions}
    assert {e["CONFIDENCE_THRESHOLD"] for e in environment.values()} == {"0.93"}
    for key, value in environment["bikes-filter-inferences"].items():
        monkeypatch.setenv(key, value)
    event = {"s3_bucket": "b", "s3_key": "incoming/1.png", "image_data": "",
             "inferences": [0.9, 0.1]}
    with pytest.raises(ThresholdConfidenceNotMet):
        filter_inferences.lambda_handler(event, None)
    confident = filter_inferences.lambda_handler({**event, "inferences": [0.95, 0.05]}, None)
    assert confident["predicted_label"] == "bicycle"


@pytest.mark.slow
def test_step_7_a_bulk_run_on_the_project_stack(bundle, sample_data_dir, tmp_path):
    """`scones workflow run --env aws --prefix` (the README's use of BulkStateMachineArn),
    with the stack's names, against the project stack on moto: its bulk state machine (the
    Distributed Map over the planned batches) and its three bulk Lambdas run in moto's
    interpreter (tests/infra/project_on_moto.py says what is stubbed: the model behind
    prod, and prod's deployment); one result per image, a bad object named as such."""
    from project_on_moto import ProjectOnMoto

    with ProjectOnMoto(bundle, stack_name=PROJECT["name"]) as aws:
        s3 = boto3.client("s3", region_name=REGION)
        prod = aws.serve("prod", aws.register_version())
        classes = sorted(p.name for p in sample_data_dir.iterdir() if p.is_dir())
        truth = {}
        for label, name in enumerate(classes):
            for path in sorted((sample_data_dir / name).glob("*.png"))[:3]:
                key = f"incoming/{path.name}"
                s3.put_object(Bucket=aws.bucket, Key=key, Body=path.read_bytes())
                aws.knows(path.read_bytes(), label)
                truth[key] = name
        s3.put_object(Bucket=aws.bucket, Key="incoming/notes.txt", Body=b"not an image")
        environment = {"AWS_ENDPOINT_URL": aws.endpoint_url, "AWS_REGION": REGION,
                       "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"}
        inference = aws.output("InferenceStateMachineArn").rsplit(":", 1)[-1]
        ran = scones("workflow", "run", "--env", "aws", "--json", "--batch-size", "2",
                     "--prefix", f"s3://{aws.bucket}/incoming/", env=environment,
                     settings={"aws.region": REGION, "aws.bucket": aws.bucket,
                               "workflow.state_machine_name": inference,
                               "workflow.endpoint_name": prod["EndpointName"],
                               "pipeline.model_package_group":
                                   aws.output("ModelPackageGroupName")})
        machines = boto3.client("stepfunctions", region_name=REGION)
        bulk_arn = aws.state_machines[f"{inference}-bulk"]
        executions = machines.list_executions(stateMachineArn=bulk_arn)["executions"]
    assert len(executions) == 1 and executions[0]["status"] == "SUCCEEDED", ran.stderr[-3000:]
    results = {r["Image"]: r for r in map(json.loads, ran.stdout.splitlines())}
    assert set(results) == {f"s3://{aws.bucket}/{k}" for k in [*truth, "incoming/notes.txt"]}
    for key, name in truth.items():
        assert results[f"s3://{aws.bucket}/{key}"]["PredictedLabel"] == name
    assert results[f"s3://{aws.bucket}/incoming/notes.txt"]["Error"] == "InvalidImage"
    assert ran.returncode == 1   # one image failed: the run says so
    assert "Traceback" not in ran.stderr
