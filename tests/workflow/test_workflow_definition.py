"""The state machine's ASL (shape, what AWS/moto accept) and the Lambda zips (contents,
determinism, importable on their own)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers import scones
from lambdas import errors
from lambdas.build import (LambdaBuildError, build_lambda_zips, code_sha256, handler_modules,
                           module_closure)
from scones.config import load_config
from workflow import definition
from workflow.definition import (CLASSIFY_STATE, ERROR_FAIL_STATE, FILTER_STATE,
                                 ROUTE_ERROR_STATE, SERIALIZE_STATE, THRESHOLD_FAIL_STATE,
                                 TRANSIENT_LAMBDA_ERRORS, WRAP_STATES_ERROR_STATE,
                                 WorkflowDefinitionError, check_definition, lambda_functions)

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_KEYS = ("serialize_image_data", "classify_image", "filter_inferences")


@pytest.fixture(scope="module")
def config():
    return load_config("local")


@pytest.fixture(scope="module")
def asl(config) -> dict:
    return json.loads(definition.workflow_definition_json(config))


def test_three_lambda_tasks_chained_by_function_name(asl, config):
    assert asl["StartAt"] == SERIALIZE_STATE
    chain = [SERIALIZE_STATE, CLASSIFY_STATE, FILTER_STATE]
    names = {key: f.name for key, f in lambda_functions(config).items()}
    for state_name, key, following in zip(chain, WORKFLOW_KEYS, chain[1:] + [None]):
        state = asl["States"][state_name]
        assert state["Type"] == "Task"
        assert state["Resource"] == "arn:aws:states:::lambda:invoke"
        assert state["Parameters"] == {"FunctionName": names[key], "Payload.$": "$"}
        assert not names[key].startswith("arn:")  # account independent
        assert state["OutputPath"] == "$.Payload"
        assert state.get("Next") == following and state.get("End", False) == (following is None)
    assert names == {"serialize_image_data": "scones-serialize-image-data",
                     "classify_image": "scones-classify-image",
                     "filter_inferences": "scones-filter-inferences",
                     "deploy_approved_model": "scones-deploy-approved-model",
                     "plan_image_batches": "scones-plan-image-batches",
                     "classify_image_batch": "scones-classify-image-batch",
                     "summarize_bulk_run": "scones-summarize-bulk-run"}
    # one table for every function; the approval one is not a state of the workflow
    assert [k for k, f in lambda_functions(config).items() if f.in_workflow] == list(
        WORKFLOW_KEYS)
    assert [k for k, f in lambda_functions(config).items() if f.in_bulk] == [
        "plan_image_batches", "classify_image_batch", "summarize_bulk_run"]


def test_retries_transient_lambda_errors_everywhere_and_throttling_on_classify(asl):
    for state_name in (SERIALIZE_STATE, CLASSIFY_STATE, FILTER_STATE):
        retriers = asl["States"][state_name]["Retry"]
        lambda_retry = next(r for r in retriers if r["ErrorEquals"] == TRANSIENT_LAMBDA_ERRORS)
        assert lambda_retry["MaxAttempts"] >= 2 and lambda_retry["BackoffRate"] > 1
        throttled = [r for r in retriers if "EndpointThrottled" in r["ErrorEquals"]]
        assert bool(throttled) == (state_name == CLASSIFY_STATE)
    throttled = next(r for r in asl["States"][CLASSIFY_STATE]["Retry"]
                     if r["ErrorEquals"] == ["EndpointThrottled"])
    assert throttled["BackoffRate"] > 1 and throttled["IntervalSeconds"] >= 1


def test_catches_route_threshold_and_everything_else_to_named_fail_states(asl):
    filter_catch = asl["States"][FILTER_STATE]["Catch"]
    # a picture unlike every training picture has its own error and Fail state, apart from
    # a real but unclear one
    assert filter_catch[0] == {"ErrorEquals": ["NotAVehicle"], "Next": "NotAVehicle"}
    assert filter_catch[1] == {"ErrorEquals": ["ThresholdConfidenceNotMet"],
                               "Next": THRESHOLD_FAIL_STATE}
    assert asl["States"]["NotAVehicle"] == {
        "Type": "Fail", "Error": "NotAVehicle", "CausePath": "$.Cause",
        "Comment": asl["States"]["NotAVehicle"]["Comment"]}
    assert filter_catch[-1] == {"ErrorEquals": ["States.ALL"], "Next": ROUTE_ERROR_STATE}
    for state_name in (SERIALIZE_STATE, CLASSIFY_STATE):
        assert asl["States"][state_name]["Catch"] == [
            {"ErrorEquals": ["States.ALL"], "Next": ROUTE_ERROR_STATE}]
    route = asl["States"][ROUTE_ERROR_STATE]
    assert route["Choices"] == [{"Variable": "$.Error", "StringMatches": "States.*",
                                 "Next": WRAP_STATES_ERROR_STATE}]
    assert route["Default"] == ERROR_FAIL_STATE
    assert asl["States"][WRAP_STATES_ERROR_STATE]["Next"] == ERROR_FAIL_STATE
    assert asl["States"][THRESHOLD_FAIL_STATE] == {
        "Type": "Fail", "Error": "ThresholdConfidenceNotMet", "CausePath": "$.Cause",
        "Comment": asl["States"][THRESHOLD_FAIL_STATE]["Comment"]}
    failed = asl["States"][ERROR_FAIL_STATE]
    assert failed["Type"] == "Fail"
    assert (failed["ErrorPath"], failed["CausePath"]) == ("$.Error", "$.Cause")
    assert set(asl["States"]) == {SERIALIZE_STATE, CLASSIFY_STATE, FILTER_STATE,
                                  THRESHOLD_FAIL_STATE, "NotAVehicle", ROUTE_ERROR_STATE,
                                  WRAP_STATES_ERROR_STATE, ERROR_FAIL_STATE}


def test_error_names_in_the_asl_are_the_lambdas_exception_class_names():
    assert definition.THRESHOLD_ERROR == errors.ThresholdConfidenceNotMet.__name__
    assert definition.THROTTLED_ERROR == errors.EndpointThrottled.__name__


def test_moto_asl_parser_accepts_the_definition(config):
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    asl = json.loads(definition.workflow_definition_json(config))
    program, _ = AmazonStateLanguageParser.parse(json.dumps(asl))
    # moto's interpreter read every state of the SDK's ASL, starting where it says
    assert program.start_at.start_at_name == asl["StartAt"] == SERIALIZE_STATE
    assert set(program.states.states) == set(asl["States"])


def test_definition_follows_config(config):
    changed = load_config("local", {"workflow.lambda_prefix": "acme",
                                    "aws.states_role_arn": "arn:aws:iam::1:role/states"})
    asl = definition.workflow_definition(changed)
    assert asl["States"][CLASSIFY_STATE]["Parameters"]["FunctionName"] == "acme-classify-image"
    workflow = definition.build_workflow(changed)
    assert workflow.role == "arn:aws:iam::1:role/states"
    assert workflow.name == config.workflow.state_machine_name
    functions = lambda_functions(load_config("local", {"workflow.confidence_threshold": 0.65}))
    assert functions["filter_inferences"].environment == {
        "CONFIDENCE_THRESHOLD": "0.65", "CLASS_NAMES": "bicycle,motorcycle"}
    assert functions["classify_image"].environment["ENDPOINT_NAME"] == config.workflow.endpoint_name
    assert functions["classify_image"].handler == "lambdas.classify_image.lambda_handler"


@pytest.mark.parametrize("breakage, fragment", [
    (lambda a: a["States"][CLASSIFY_STATE].update(Next="Nowhere"), "'Nowhere', which is not"),
    (lambda a: a.update(StartAt="Missing"), "StartAt 'Missing'"),
    (lambda a: a["States"].update(Orphan={"Type": "Succeed"}), "not reachable.*Orphan"),
    (lambda a: a["States"][FILTER_STATE]["Catch"].reverse(), "States.ALL must be alone and last"),
    (lambda a: a["States"][FILTER_STATE].pop("End"), "exactly one of Next and End"),
    (lambda a: a["States"][THRESHOLD_FAIL_STATE].update(Cause="x"), "both a value and a path"),
])
def test_check_definition_refuses_broken_machines(asl, breakage, fragment):
    broken = copy.deepcopy(asl)
    breakage(broken)
    with pytest.raises(WorkflowDefinitionError, match=fragment):
        check_definition(broken)


# ---- zips ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> dict[str, Path]:
    return build_lambda_zips(tmp_path_factory.mktemp("zips"), keys=WORKFLOW_KEYS)


def test_each_zip_holds_only_what_its_function_imports(zips):
    contents = {key: sorted(zipfile.ZipFile(path).namelist()) for key, path in zips.items()}
    shared = ["lambdas/__init__.py", "lambdas/errors.py", "lambdas/events.py",
              "lambdas/settings.py"]
    assert contents["filter_inferences"] == sorted(shared + ["lambdas/filter_inferences.py"])
    assert contents["serialize_image_data"] == sorted(
        shared + ["lambdas/clients.py", "lambdas/serialize_image_data.py"])
    assert contents["classify_image"] == sorted(
        shared + ["lambdas/clients.py", "lambdas/classify_image.py"])
    for path in zips.values():
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                assert info.date_time == (1980, 1, 1, 0, 0, 0)
                assert archive.read(info) == (REPO_ROOT / info.filename).read_bytes()


def test_zips_are_byte_identical_across_builds(zips, tmp_path):
    again = build_lambda_zips(tmp_path, keys=WORKFLOW_KEYS)
    for key in WORKFLOW_KEYS:
        assert again[key].read_bytes() == zips[key].read_bytes()
        assert code_sha256(again[key]) == code_sha256(zips[key])


def test_every_table_function_has_a_handler_module(config):
    modules = handler_modules()
    for function in lambda_functions(config).values():
        assert modules[function.key] == function.module


def test_handlers_import_and_run_from_their_zip_alone(zips, tmp_path):
    # -S: no site processing, so the project's editable install is invisible; only the
    # zip and the installed packages (boto3, as the Lambda runtime has) are on the path.
    site_packages = sysconfig.get_paths()["purelib"]
    script = (
        "import importlib, json, sys\n"
        "zip_path, module = sys.argv[1], sys.argv[2]\n"
        "mod = importlib.import_module(module)\n"
        "assert mod.__file__.startswith(zip_path), mod.__file__\n"
        "assert callable(mod.lambda_handler)\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pipelines', 'workflow', 'numpy', 'PIL', 'sagemaker', 'torch'))\n"
        "assert not leaked, leaked\n"
        "if module.endswith('filter_inferences'):\n"
        "    print(json.dumps(mod.lambda_handler({'s3_bucket': 'b', 's3_key': 'k',"
        " 'image_data': '', 'inferences': [0.1, 0.9]}, None)))\n")
    for key, path in zips.items():
        env = {"PATH": os.environ.get("PATH", ""),
               "PYTHONPATH": os.pathsep.join([str(path), site_packages]),
               "CONFIDENCE_THRESHOLD": "0.8", "CLASS_NAMES": "bicycle,motorcycle"}
        result = subprocess.run([sys.executable, "-S", "-c", script, str(path), f"lambdas.{key}"],
                                capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
        assert result.returncode == 0, f"{key}: {result.stderr}"
        if key == "filter_inferences":
            assert json.loads(result.stdout)["predicted_label"] == "motorcycle"


def test_build_refuses_imports_the_lambda_runtime_lacks(tmp_path):
    package = tmp_path / "lambdas"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("import numpy\n")
    (package / "uses_numpy.py").write_text(
        "from lambdas import helper\n\ndef lambda_handler(event, context):\n    return {}\n")
    (package / "uses_project.py").write_text(
        "def lambda_handler(event, context):\n    from scones.config import load_config\n")
    (package / "fine.py").write_text(
        "import json\nfrom .helper2 import x\n\ndef lambda_handler(event, context):\n    pass\n")
    (package / "helper2.py").write_text("import boto3\nx = 1\n")
    assert set(handler_modules(package)) == {"uses_numpy", "uses_project", "fine"}
    assert module_closure("lambdas.fine", package) == ["lambdas.fine", "lambdas.helper2"]
    with pytest.raises(LambdaBuildError, match="lambdas.helper imports 'numpy'"):
        build_lambda_zips(tmp_path / "out", keys=["uses_numpy"], package_dir=package)
    with pytest.raises(LambdaBuildError, match="'scones.config'"):
        build_lambda_zips(tmp_path / "out", keys=["uses_project"], package_dir=package)
    with pytest.raises(LambdaBuildError, match="no Lambda function 'nope'"):
        build_lambda_zips(tmp_path / "out", keys=["nope"], package_dir=package)
    assert not (tmp_path / "out" / "uses_numpy.zip").exists()


def _scones(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return scones(*args, cwd=cwd, timeout=120)


def test_cli_prints_the_definition_and_builds_zips(asl, tmp_path):
    result = _scones("workflow", "definition")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == asl
    result = _scones("lambdas", "build", "--out", str(tmp_path / "zips"))
    assert result.returncode == 0, result.stderr
    assert f"zips in {tmp_path / 'zips'}" in result.stdout
    for key in WORKFLOW_KEYS:
        path = tmp_path / "zips" / f"{key}.zip"
        row = next(line for line in result.stdout.splitlines() if line.startswith(key + " "))
        assert str(path.stat().st_size) in row
    result = _scones("workflow", "deploy")
    assert result.returncode == 2
    assert "--env aws" in result.stderr and "scones workflow run" in result.stderr
    assert "Traceback" not in result.stderr


def test_resource_partition_comes_from_the_config_not_the_ambient_session(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "cn-north-1")  # what the SDK alone would use
    for region, partition in (("us-east-1", "aws"), ("cn-north-1", "aws-cn")):
        config = load_config("local", {"aws.region": region})
        states = definition.build_workflow(config).definition.to_dict()["States"]
        assert states[CLASSIFY_STATE]["Resource"] == f"arn:{partition}:states:::lambda:invoke"


@pytest.mark.parametrize("target, caught_error, expected_error", [
    (ROUTE_ERROR_STATE, "ImageNotFound", "ImageNotFound"),
    (ROUTE_ERROR_STATE, "Lambda.Unknown", "Lambda.Unknown"),
    (ROUTE_ERROR_STATE, "States.Timeout", "WorkflowError"),
    (THRESHOLD_FAIL_STATE, "ThresholdConfidenceNotMet", "ThresholdConfidenceNotMet"),
])
def test_failure_states_report_the_caught_error_in_moto(aws_credentials, asl, monkeypatch, target, caught_error,
                                                        expected_error):
    """Our failure states, as written in the ASL, run by moto's Step Functions interpreter
    after a state that hands them what a Catch does: {"Error", "Cause"}. A States.* name
    cannot be a Fail state's Error, so it arrives wrapped, its name kept in the Cause."""
    import time

    import boto3
    from moto import mock_aws

    cause = json.dumps({"errorMessage": "s3://b/k.png: details", "errorType": caught_error})
    failure_states = {name: state for name, state in asl["States"].items()
                      if name not in (SERIALIZE_STATE, CLASSIFY_STATE, FILTER_STATE)}
    machine = {"StartAt": "Caught", "States": {
        "Caught": {"Type": "Pass", "Result": {"Error": caught_error, "Cause": cause},
                   "Next": target}, **failure_states}}
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn = boto3.client("stepfunctions")
        arn = sfn.create_state_machine(name="fail-check", definition=json.dumps(machine),
                                       roleArn="arn:aws:iam::123456789012:role/states"
                                       )["stateMachineArn"]
        execution = sfn.start_execution(stateMachineArn=arn, input="{}")["executionArn"]
        for _ in range(200):
            described = sfn.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                break
            time.sleep(0.05)
    assert described["status"] == "FAILED"
    assert described["error"] == expected_error
    if expected_error == "WorkflowError":
        assert json.loads(described["cause"]) == {"Error": caught_error, "Cause": cause}
    else:
        assert described["cause"] == cause
