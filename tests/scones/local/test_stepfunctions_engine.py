"""scones/local/stepfunctions_engine.py on its own: the version guard, handlers loaded from their zips,
Lambda errors as Step Functions sees them, and the direct (botocore-free) calls giving the
same answers as the boto3 client they stand in for."""
from __future__ import annotations

import io
import json
import time
import zipfile
from unittest import mock

import boto3
import pytest

from scones.local import stepfunctions_engine
from scones.local.stepfunctions_engine import (DirectExecutions, DirectStaging, EngineError,
                                  check_moto_version, load_handler_from_zip, local_aws)

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/engine-test"

HANDLER_SOURCE = '''
class NotAllowed(Exception):
    """A named error, as the project's lambdas raise them."""


def lambda_handler(event, context):
    if event.get("fail"):
        raise NotAllowed(f"refused {event['fail']}")
    return {"doubled": event["n"] * 2, "function": context.function_name}
'''


def zip_of(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def test_another_moto_version_is_refused_with_what_to_do():
    check_moto_version()  # the pinned one passes
    with mock.patch("moto.__version__", "9.9.9"):
        with pytest.raises(EngineError, match=r"moto 9\.9\.9 is installed.*make install"):
            check_moto_version()


def test_handler_is_imported_from_its_zip_only(tmp_path):
    handler = load_handler_from_zip(zip_of({"engine_probe.py": HANDLER_SOURCE}),
                                    "engine_probe.lambda_handler", tmp_path / "a")
    context = stepfunctions_engine.LambdaContext("probe", "arn:aws:lambda:::function:probe", 128, 3)
    assert handler({"n": 21}, context) == {"doubled": 42, "function": "probe"}
    import sys
    assert "engine_probe" not in sys.modules  # the process forgets the zip's modules

    with pytest.raises(EngineError, match="cannot import 'missing_module'"):
        load_handler_from_zip(zip_of({"other.py": "x = 1"}), "missing_module.lambda_handler",
                              tmp_path / "b")
    with pytest.raises(EngineError, match="not a zip"):
        load_handler_from_zip(b"not a zip at all", "m.lambda_handler", tmp_path / "c")
    with pytest.raises(EngineError, match="has no function 'nope'"):
        load_handler_from_zip(zip_of({"engine_probe.py": HANDLER_SOURCE}),
                              "engine_probe.nope", tmp_path / "d")


def _machine(sfn, iam, lam, name: str) -> str:
    role = iam.create_role(RoleName=f"role-{name}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lam.create_function(FunctionName=name, Runtime="python3.13", Role=role,
                        Handler="engine_probe.lambda_handler",
                        Code={"ZipFile": zip_of({"engine_probe.py": HANDLER_SOURCE})})
    definition = {
        "StartAt": "Call",
        "States": {
            "Call": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
                     "Parameters": {"FunctionName": name, "Payload.$": "$"},
                     "OutputPath": "$.Payload", "End": True,
                     "Catch": [{"ErrorEquals": ["NotAllowed"], "Next": "Refused"}]},
            "Refused": {"Type": "Fail", "Error": "RefusedByTheLambda"},
        },
    }
    return sfn.create_state_machine(name=f"sm-{name}", definition=json.dumps(definition),
                                    roleArn=ROLE)["stateMachineArn"]


def _wait(describe, arn: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        described = describe(executionArn=arn)
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.05)
    raise AssertionError(f"execution {arn} still running")


def test_lambda_results_and_named_errors_reach_the_state_machine_as_on_aws(aws_credentials):
    with local_aws(REGION) as aws:
        sfn = boto3.client("stepfunctions", region_name=REGION)
        arn = _machine(sfn, boto3.client("iam", region_name=REGION),
                       boto3.client("lambda", region_name=REGION), "probe")
        direct = DirectExecutions(sfn, REGION)
        ok = direct.start_execution(stateMachineArn=arn, name="ok", input='{"n": 4}')
        refused = direct.start_execution(stateMachineArn=arn, name="no",
                                         input='{"fail": "this one"}')
        done = _wait(direct.describe_execution, ok["executionArn"])
        assert done["status"] == "SUCCEEDED"
        assert json.loads(done["output"]) == {"doubled": 8, "function": "probe"}
        failed = _wait(direct.describe_execution, refused["executionArn"])
        # the handler's exception class name is the Error the Catch matched on
        assert (failed["status"], failed["error"]) == ("FAILED", "RefusedByTheLambda")
        # the direct answers are the boto3 client's answers, field by field
        for described in (done, failed):
            through_boto3 = sfn.describe_execution(executionArn=described["executionArn"])
            through_boto3.pop("ResponseMetadata")
            for field in ("status", "output", "error", "name", "stateMachineArn"):
                assert described.get(field) == through_boto3.get(field), field
        assert set(aws.ended_executions(timeout=1)) >= {ok["executionArn"]}


def test_direct_staging_puts_what_boto3_reads_back_and_errors_like_boto3(aws_credentials):
    with local_aws(REGION):
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="staging-probe")
        staging = DirectStaging(s3, REGION)
        staging.put_object(Bucket="staging-probe", Key="in/a.png", Body=b"\x89PNG bytes")
        assert s3.get_object(Bucket="staging-probe", Key="in/a.png")["Body"].read() == \
            b"\x89PNG bytes"
        with pytest.raises(s3.exceptions.NoSuchBucket):
            staging.put_object(Bucket="no-such-bucket", Key="k", Body=b"x")


def test_a_lambda_zip_is_extracted_once_and_its_bytecode_kept_across_runs(tmp_path):
    """With a code cache, each zip's files live in <cache>/<sha256>/ from one run to the
    next, compiled when extracted (also where PYTHONDONTWRITEBYTECODE is set), so the
    handler's modules are compiled once, not on every `workflow run`."""
    from types import SimpleNamespace

    from scones.local.stepfunctions_engine import InProcessLambdas

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cached_handler_mod.py", "def handler(event, context):\n"
                                                  "    return {'seen': event}\n")
    function = SimpleNamespace(function_arn="arn:f", code_sha_256="x", function_name="f",
                               code_bytes=buffer.getvalue(), handler="cached_handler_mod.handler")
    cache = tmp_path / "code"
    first = InProcessLambdas(code_cache=cache)
    assert first.handler_for(function)({"a": 1}, None) == {"seen": {"a": 1}}
    [folder] = [p for p in cache.iterdir() if not p.name.startswith(".")]
    source = folder / "cached_handler_mod.py"
    extracted_at = source.stat().st_mtime_ns
    assert list((folder / "__pycache__").glob("cached_handler_mod.*.pyc"))
    second = InProcessLambdas(code_cache=cache)  # the next run
    assert second.handler_for(function)({"b": 2}, None) == {"seen": {"b": 2}}
    assert source.stat().st_mtime_ns == extracted_at  # not extracted again
    assert [p for p in cache.iterdir() if not p.name.startswith(".")] == [folder]
    first.close(), second.close()
