"""The deploy state machine and the project stack's wiring, read as CloudFormation resolves
them for given parameters (iam_proof.Resolved): retries, re-approval, traffic shifting that
SageMaker accepts for the instance count, the dead-letter queue's senders."""
from __future__ import annotations

import pytest

from iam_proof import Resolved
from infra.deploy_state_machine import STAGES
from infra.project_template import project_template
from scones.config import load_config

PARAMETERS = {"SageMakerProjectName": "scones-team1", "SageMakerProjectId": "p-a1b2c3d4e5f6"}
PERMANENT = ["SageMaker.AccessDeniedException", "SageMaker.ValidationException",
             "SageMaker.ResourceNotFoundException", "States.TaskFailed", "States.ALL"]


@pytest.fixture(scope="module")
def template():
    return project_template(load_config("local"))


def _definition(template, **parameters) -> dict:
    resolved = Resolved(template, {**PARAMETERS, **parameters})
    return resolved.properties("DeployStateMachine")["Definition"]


def test_permanent_errors_are_never_retried_and_retries_end_within_minutes(template):
    states = _definition(template)["States"]
    retried = 0
    for name, state in states.items():
        for retrier in state.get("Retry", []):
            assert not set(retrier["ErrorEquals"]) & set(PERMANENT), name
            interval, rate = retrier["IntervalSeconds"], retrier.get("BackoffRate", 2.0)
            total = sum(interval * rate ** i for i in range(retrier["MaxAttempts"]))
            assert total <= 300, f"{name} retries for {total:.0f} s"
            retried += 1
    assert retried >= 10


@pytest.mark.parametrize("stage", STAGES)
def test_a_refused_update_waits_only_while_the_endpoint_is_busy(template, stage):
    states = _definition(template)["States"]
    cap = stage.capitalize()
    catch, = states[f"{cap}UpdateEndpoint"]["Catch"]
    assert catch["ErrorEquals"] == ["States.ALL"]
    check = states[states[catch["Next"]]["Next"]]
    assert check["Type"] == "Choice"
    assert check["Choices"][0]["Next"] == f"{cap}WaitWhileBusy"   # "in progress": wait
    failed = states[check["Default"]]
    assert failed["Type"] == "Fail"                                 # anything else: at once
    assert failed["CausePath"].endswith("updateError.Cause")


def test_a_version_already_on_staging_goes_on_to_the_test_and_the_approval(template):
    """Approving again a version whose staging test or manual approval failed takes it on."""
    states = _definition(template)["States"]
    assert states["StagingAlreadyServing"]["Type"] == "Pass"
    assert states["StagingAlreadyServing"]["Next"] == "StagingTest"
    assert states["ProdAlreadyServing"]["Next"] == "DeployedToProd"


@pytest.mark.parametrize("count, routing, expected", [
    ("1", "CANARY", "ALL_AT_ONCE"), ("1", "LINEAR", "ALL_AT_ONCE"),
    ("2", "CANARY", "CANARY"), ("4", "LINEAR", "LINEAR")])
def test_traffic_shifting_fits_the_instance_count(template, count, routing, expected):
    states = _definition(template, ProdInstanceCount=count, ProdTrafficRouting=routing)["States"]
    for state in ("ProdCreateEndpoint", "ProdUpdateEndpoint"):
        policy = states[state]["Parameters"]["DeploymentConfig"]["BlueGreenUpdatePolicy"]
        config = policy["TrafficRoutingConfiguration"]
        assert config["Type"] == expected
        assert config["WaitIntervalInSeconds.$"]            # baking, then the old fleet goes
        assert "TerminationWaitInSeconds.$" in policy
    step = template["Parameters"]["TrafficStepPercent"]
    assert (step["MinValue"], step["MaxValue"]) == (10, 50)


def test_every_rule_and_schedule_with_the_dead_letter_queue_may_send_to_it(template):
    resolved = Resolved(template, {**PARAMETERS, "MonitoringSchedule": "rate(1 hour)"})
    policy = resolved.properties("DeadLetterQueuePolicy")["PolicyDocument"]
    allowed = set(policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"])
    for logical, properties in resolved.of_type("AWS::Events::Rule").items():
        if any("DeadLetterConfig" in t for t in properties["Targets"]):
            assert resolved.attribute(logical, "Arn") in allowed, logical


def test_prod_applies_the_promoted_versions_own_threshold_to_the_filtering_lambdas(template):
    with_workflow = _definition(template, LambdaCodeBucket="code")["States"]
    assert with_workflow["ProdPutScalingPolicy"]["Next"] == "ProdReadThreshold"
    assert with_workflow["ProdAlreadyServing"]["Next"] == "ProdReadThreshold"
    read = with_workflow["ProdReadThreshold"]
    assert read["Resource"].endswith(":sagemaker:describeModelPackage")
    assert "ResultSelector" not in read   # a version without metadata must not fail it
    choice = with_workflow["ProdHasThreshold"]
    assert choice["Default"] == "DeployedToProd"
    applied, state = {}, with_workflow[choice["Choices"][0]["Next"]]
    while True:
        assert state["Resource"].endswith(":lambda:updateFunctionConfiguration")
        variables = state["Parameters"]["Environment"]["Variables"]
        applied[state["Parameters"]["FunctionName"]] = variables
        if state["Next"] == "DeployedToProd":
            break
        state = with_workflow[state["Next"]]
    assert set(applied) == {"scones-team1-filter-inferences",
                            "scones-team1-classify-image-batch"}
    for name, variables in applied.items():
        # the whole environment (UpdateFunctionConfiguration replaces it), the threshold
        # from the version's CustomerMetadataProperties
        assert variables["CONFIDENCE_THRESHOLD.$"] == \
            "$.promoted.CustomerMetadataProperties.ConfidenceThreshold"
        assert variables["CLASS_NAMES"] == "bicycle,motorcycle"
    assert applied["scones-team1-classify-image-batch"]["ENDPOINT_NAME"] == \
        "scones-team1-p-a1b2c3d4e5f6-prod"
    # without the workflow's Lambdas (no LambdaCodeBucket) prod ends when it serves
    without = _definition(template)["States"]
    assert without["ProdPutScalingPolicy"]["Next"] == "DeployedToProd"
    assert "ProdReadThreshold" not in without


def test_the_project_stack_has_the_bulk_workflow(template):
    resolved = Resolved(template, {**PARAMETERS, "LambdaCodeBucket": "code"})
    bulk = resolved.properties("BulkStateMachine")
    assert bulk["StateMachineName"] == "scones-team1-inference-bulk"
    functions = {p["FunctionName"]: p for p in resolved.of_type("AWS::Lambda::Function").values()}
    assert {"scones-team1-plan-image-batches", "scones-team1-classify-image-batch",
            "scones-team1-summarize-bulk-run"} <= set(functions)
    invoked = {s["Parameters"]["FunctionName"] for s in _all_states(bulk["Definition"])
               if s.get("Resource") == "arn:aws:states:::lambda:invoke"}
    assert invoked <= set(functions)
    assert resolved.value(template["Outputs"]["BulkStateMachineArn"]["Value"]).endswith(
        ":stateMachine:scones-team1-inference-bulk")


def _all_states(definition):
    for state in definition["States"].values():
        yield state
        if "ItemProcessor" in state:
            yield from _all_states(state["ItemProcessor"])


def test_framework_images_are_the_sdks_for_every_region(template):
    """The Deep Learning Containers account differs by region: the template maps each
    region to the account the SDK's image_uris names, and the monitoring job's image is
    exactly what image_uris.retrieve gives for the stack's region."""
    import json

    from sagemaker import image_uris

    config = load_config("local")
    pc = config.pipeline
    mapping = template["Mappings"]["FrameworkImageAccounts"]
    assert len(mapping) > 30 and "763104351884" not in json.dumps(
        {k: v for k, v in template.items() if k != "Mappings"})
    for region in mapping:
        suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        for scope in ("training", "inference"):
            expected = image_uris.retrieve("pytorch", region, version=pc.framework_version,
                                           py_version=pc.py_version,
                                           instance_type=pc.processing_instance_type,
                                           image_scope=scope)
            account = mapping[region][scope.capitalize()]
            assert expected == (f"{account}.dkr.ecr.{region}.{suffix}/pytorch-{scope}:"
                                f"{pc.framework_version}-cpu-{pc.py_version}")
    resolved = Resolved(template, {**PARAMETERS, "MonitoringSchedule": "rate(1 hour)"})
    request = json.loads(resolved.properties("MonitoringJobSchedule")["Target"]["Input"])
    assert request["AppSpecification"]["ImageUri"] == image_uris.retrieve(
        "pytorch", "us-east-1", version=pc.framework_version, py_version=pc.py_version,
        instance_type=pc.processing_instance_type, image_scope="training")


BUILD_PACKAGES = {"sagemaker", "boto3", "pyyaml", "rich"}
NOT_INSTALLED_BY_THE_BUILD = ["torch", "torchvision", "PIL", "matplotlib", "flask", "plotly",
                              "waitress", "stepfunctions"]


def test_the_model_build_installs_only_what_upserting_the_pipeline_needs(tmp_path):
    """The buildspec installs the project without dependencies plus BUILD_PACKAGES; the
    template's own build commands (`scones data snapshot`, then get-pipeline-definition
    with the AWS templates' kwargs, as run-pipeline builds it) run with everything else
    unimportable."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((repo / "codebuild-buildspec.yml").read_text())
    commands = " ".join(spec["phases"]["install"]["commands"])
    assert "pip install --no-deps ." in commands
    installed = set()
    for command in spec["phases"]["install"]["commands"]:
        if command.startswith("pip install -c constraints.txt"):
            installed |= {re.split(r"[<>=]", n.strip('"'))[0] for n in command.split()[4:]}
    assert installed == BUILD_PACKAGES
    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {NOT_INSTALLED_BY_THE_BUILD!r}:
            raise ModuleNotFoundError(f"not installed in the model build: {{name}}")
sys.meta_path.insert(0, Block())
import boto3
from moto import mock_aws
with mock_aws():
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="sagemaker-project-p-1")
    s3.put_object(Bucket="sagemaker-project-p-1", Key="data/train/bicycle/1.png", Body=b"png")
    from app.cli.main import main as scones   # the build's `scones data snapshot` first
    assert scones(["data", "snapshot", "s3://sagemaker-project-p-1/data/train/", "--env", "aws",
                   "--json", "--set", "aws.bucket=sagemaker-project-p-1",
                   "--set", "aws.region=us-east-1"]) == 0
    from app.cli.get_pipeline_definition import main
    sys.exit(main(["--module-name", "pipelines.pipeline", "-f", {str(tmp_path / "p.json")!r},
                   "--kwargs", '{{"region":"us-east-1","role":"arn:aws:iam::123456789012:role/x",'
                   '"default_bucket":"sagemaker-project-p-1","pipeline_name":"bikes-p-1",'
                   '"model_package_group_name":"bikes-p-1","base_job_prefix":"bikes-p-1",'
                   '"sagemaker_project_name":"bikes","input_data_url":"s3://sagemaker-project-p-1/data/",'
                   '"sagemaker_project_arn":"arn:aws:sagemaker:us-east-1:123456789012:project/bikes"}}']))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=repo,
                            env={**__import__("os").environ, "AWS_ACCESS_KEY_ID": "x",
                                 "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"Steps"' in (tmp_path / "p.json").read_text()


def _pip_requirements(command: list[str]) -> tuple[list[str], bool]:
    """(the requirements a `pip install ...` argv names, whether it installs dependencies)."""
    names, skip = [], False
    for arg in command[2:]:
        if skip:
            skip = False
        elif arg in ("-c", "-r", "--constraint", "--requirement"):
            skip = True
        elif not arg.startswith("-"):
            names.append(arg)
    return names, "--no-deps" not in command


def _with_dependencies(requirements: list[str]) -> set[str]:
    """The distributions pip installs for these requirements (their requirements, markers
    and extras honoured), as normalised names, from the installed metadata."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [(Requirement(r), ()) for r in requirements]
    while todo:
        requirement, _ = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = tuple(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in metadata.requires(name) or []:
            needed = Requirement(line)
            if needed.marker is None or any(needed.marker.evaluate({"extra": e})
                                            for e in ("", *extras)):
                todo.append((needed, ()))
    return {name for name, _ in seen}


def test_the_staging_test_installs_only_what_its_command_can_import(template):
    """The staging test's CodeBuild installs the project without its dependencies, then a
    list without torch (CUDA wheels from PyPI). The list suffices: every package outside
    the project and the standard library that `scones` (the command's entry point) can
    import, at module or function level, is installed by it (the import graph, grimp)."""
    import shlex
    import sys
    from importlib import metadata

    import grimp
    import yaml
    from packaging.utils import canonicalize_name

    project = Resolved(template, PARAMETERS).properties("StagingTestProject")
    spec = yaml.safe_load(project["Source"]["BuildSpec"])
    installs = [shlex.split(c) for c in spec["phases"]["install"]["commands"]
                if c.startswith("pip install")]
    requirements = []
    for command in installs:
        names, with_dependencies = _pip_requirements(command)
        if "." in names:   # the project itself: its own dependencies would bring torch
            assert not with_dependencies, command
            names.remove(".")
        requirements += names
    installed = _with_dependencies(requirements)
    assert "torch" not in installed and "torchvision" not in installed

    command = spec["phases"]["build"]["commands"][0]
    assert command.split()[0] == "scones", command
    (script,) = metadata.entry_points(group="console_scripts", name="scones")
    entry = script.value.split(":")[0]
    packages = ("app", "infra", "pipelines", "workflow", "scones", "lambdas")
    graph = grimp.build_graph(*packages, include_external_packages=True, cache_dir=None)
    imported = {m for m in graph.find_upstream_modules(entry) if "." not in m} - set(packages)
    external = imported - set(sys.stdlib_module_names)
    assert {"sagemaker", "boto3", "numpy", "PIL"} <= external   # the graph is the real one
    providers = metadata.packages_distributions()
    uncovered = {name for name in external
                 if not {canonicalize_name(d) for d in providers.get(name, [])} & installed}
    assert not uncovered, f"`scones` can import {sorted(uncovered)}, not installed"
