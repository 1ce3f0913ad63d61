"""Bad invocations of every command, as a careless or hostile user types them: each ends
with one `error: ...` line naming the problem, a non-zero exit, and never a traceback.

The real CLI in subprocesses. AWS cases run without credentials (or against moto's server,
or with botocore's Stubber for answers moto does not give), never against AWS."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import register_model
from helpers import scones as run_scones

NO_AWS = {  # no credentials anywhere, and no waiting for an instance-metadata service
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config", "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard",
}
AWS_SETTINGS = ["--set", "aws.role_arn=arn:aws:iam::111122223333:role/sm",
                "--set", "aws.bucket=scones-test-bucket",
                "--set", "data.input_url=s3://scones-test-bucket/train"]
CREDENTIALS = r"no usable AWS credentials .*set AWS_PROFILE .*aws configure"


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("SCONES_DEBUG",)}
    return {**env, **NO_AWS, **extra}


def scones(workspace: Path, *args: str, env: dict | None = None, stdout=subprocess.PIPE,
           timeout: float = 180) -> subprocess.CompletedProcess:
    """The CLI with no AWS settings in its environment (clean_env) unless env is given."""
    return run_scones(*args, workspace=workspace, clean_env=env or clean_env(),
                      stdout=stdout, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, pattern: str) -> str:
    output = (result.stdout or "") + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode != 0, output
    # Ours: `error: ...`; argparse's usage errors: `scones x y: error: ...` under the usage.
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("error: ") or re.match(r"scones [\w -]+: error: ", line)]
    assert len(errors) == 1, result.stderr
    assert re.search(pattern, errors[0]), f"{errors[0]!r} does not match {pattern!r}"
    return errors[0]


@pytest.fixture
def workspace(tmp_path) -> Path:
    return tmp_path / "ws"


# (arguments, what the error line must say). {tmp}: a scratch folder of the test.
BAD_INVOCATIONS = [
    # configuration, any command
    (["registry", "list", "--set", "training.epochs=[1,2"],
     r"--set 'training.epochs=\[1,2': the value is not valid YAML"),
    (["pipeline", "definition", "--set", "training.epochs=0"], r"training.epochs must be at least 1"),
    (["registry", "list", "--set", "nonsense"], r"--set 'nonsense': expected KEY=VALUE"),
    (["registry", "list", "--config", "{tmp}/missing.yaml"], r"configuration file not found"),
    # pipeline
    (["pipeline", "run", "--param", "Epochs=abc"], r"Epochs"),
    (["pipeline", "run", "--param", "NoSuchParameter=1"], r"NoSuchParameter"),
    # registry
    (["registry", "show", "7"], r"has no version 7"),
    (["registry", "approve", "abc"], r"whole number, got 'abc'"),
    (["registry", "reject", "1"], r"--description"),
    (["registry", "reject", "1", "--description", "bad"], r"no version 1"),
    # workflow
    (["workflow", "run"], r"one of the arguments --image --images --s3 --prefix"),
    (["workflow", "run", "--images", "{tmp}/nowhere"], r"--images .*nowhere: no such folder"),
    (["workflow", "run", "--image", "{tmp}/none.png"], r"--image .*none.png: no such file"),
    (["workflow", "run", "--s3", "http://not-s3/x"], r"not an s3:// URL"),
    (["lambdas", "build", "--out", "/proc/no-such-folder/zips"], r"/proc/no-such-folder"),
    # endpoint
    (["endpoint", "deploy", "--version", "9"], r"has no version 9"),
    (["endpoint", "serve", "--port", "70000"], r"port 70000 is not a TCP port"),
    (["endpoint", "serve", "--port", "0"], r"no model to serve.*scones pipeline run"),
    # monitor
    (["monitor", "report"], r"no data-capture records"),
    (["monitor", "report", "--since", "99999999999d"], r"OverflowError|--since"),
    (["monitor", "report", "--source", "{tmp}/nowhere"], r"capture source .*nowhere does not exist"),
    # infra, demo
    (["infra", "template", "--out", "/proc/no-such-folder/stack.json"], r"/proc/no-such-folder"),
    (["demo", "--env", "aws"], r"local"),
    (["endpoint", "serve", "--env", "aws"], r"local endpoint"),
]


@pytest.mark.parametrize("args,pattern", BAD_INVOCATIONS,
                         ids=[" ".join(a) for a, _ in BAD_INVOCATIONS])
def test_a_bad_invocation_is_one_named_error(workspace, tmp_path, args, pattern):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_one_line_error(scones(workspace, *args), pattern)


# Every AWS command without credentials: one line naming what to set (nine of ten printed
# up to 444 lines of botocore traceback).
AWS_COMMANDS = [
    ["registry", "list"], ["registry", "show", "1"], ["registry", "approve", "1"],
    ["registry", "reject", "1", "--description", "worse"], ["pipeline", "executions"],
    ["pipeline", "run", *AWS_SETTINGS], ["endpoint", "status"],
    ["endpoint", "deploy", "--version", "1", *AWS_SETTINGS], ["workflow", "deploy", *AWS_SETTINGS],
    ["workflow", "run", "--s3", "s3://scones-test-bucket/x.png", *AWS_SETTINGS],
    ["monitor", "report", *AWS_SETTINGS],
]


@pytest.mark.parametrize("args", AWS_COMMANDS, ids=[" ".join(a[:2]) for a in AWS_COMMANDS])
def test_aws_commands_without_credentials_say_what_to_set(workspace, args):
    result = scones(workspace, *args, "--env", "aws")
    assert_one_line_error(result, CREDENTIALS + "|lambda_role_arn|states_role_arn")


def test_missing_aws_settings_are_reported_together_and_only_those_needed(workspace):
    needed = scones(workspace, "pipeline", "run", "--env", "aws")
    line = assert_one_line_error(needed, r"aws.role_arn is required")
    assert "aws.bucket is required" in line
    # no input URL needed: the newest data snapshot in the bucket is the default input
    assert "data.input_url" not in line
    # `registry list` needs credentials, not a role or a bucket.
    listing = scones(workspace, "registry", "list", "--env", "aws")
    line = assert_one_line_error(listing, CREDENTIALS)
    assert "role_arn" not in line and "bucket" not in line


def test_an_unknown_region_names_the_region_setting(workspace):
    env = clean_env(AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="secret")
    result = scones(workspace, "registry", "list", "--env", "aws",
                    "--set", "aws.region=mars-north-9", env=env)
    assert_one_line_error(result, r"cannot reach AWS .*mars-north-9.*aws.region")


def test_an_unknown_profile_names_the_profile_setting(workspace):
    result = scones(workspace, "registry", "list", "--env", "aws",
                    env=clean_env(AWS_PROFILE="no-such-profile"))
    assert_one_line_error(result, r"no-such-profile.*set AWS_PROFILE")


def test_a_missing_bucket_on_aws_names_the_bucket_setting(workspace):
    """The real CLI in moto's AWS, where the bucket does not exist."""
    code = ("import sys\nfrom moto import mock_aws\nfrom app.cli.main import main\n"
            "with mock_aws():\n    sys.exit(main(sys.argv[1:]))\n")
    env = clean_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    result = subprocess.run(
        [sys.executable, "-c", code, "monitor", "report", "--env", "aws", *AWS_SETTINGS,
         "--set", f"local.workspace={workspace}"],
        capture_output=True, text=True, timeout=180, env=env)
    assert_one_line_error(result, r"bucket scones-test-bucket does not exist.*aws.bucket")


@pytest.mark.parametrize("code,status,pattern", [
    ("AccessDeniedException", 400, r"AWS denied ListModelPackages .*AWS_PROFILE"),
    ("ExpiredTokenException", 400, r"credentials have expired.*aws sso login"),
    ("UnrecognizedClientException", 400, r"did not accept the credentials.*AWS_PROFILE"),
    ("ValidationException", 400, r"refused the role .*aws.role_arn"),
    ("ThrottlingException", 400, r"throttled ListModelPackages"),
])
def test_aws_refusals_become_errors_saying_what_to_do(code, status, pattern):
    """botocore's own ClientError, made by its Stubber from the service model."""
    import boto3
    from botocore.stub import Stubber

    from scones.aws_errors import AwsError, translate

    client = boto3.client("sagemaker", region_name="eu-west-1", aws_access_key_id="x",
                          aws_secret_access_key="y")
    message = ("Could not assume role arn:aws:iam::1:role/x" if code == "ValidationException"
               else "denied")
    with Stubber(client) as stub:
        stub.add_client_error("list_model_packages", service_error_code=code,
                              service_message=message, http_status_code=status)
        with pytest.raises(Exception) as raised:
            client.list_model_packages(ModelPackageGroupName="g")
    translated = translate(raised.value, region="eu-west-1", role_arn="arn:aws:iam::1:role/x")
    assert isinstance(translated, AwsError)
    assert re.search(pattern, str(translated)), str(translated)


def test_something_not_from_aws_is_not_translated():
    from scones.aws_errors import translate

    assert translate(ValueError("x")) is None


@pytest.mark.slow  # needs the session's trained model
def test_a_closed_pipe_ends_quietly(workspace, small_model_tar):
    from scones.config import load_config

    config = load_config("local", {"local.workspace": str(workspace)})
    for _ in range(3):
        register_model(config, small_model_tar)
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -0`: nobody reads
    try:
        result = scones(workspace, "registry", "list", stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert result.stderr == ""


def test_monitor_report_into_an_existing_file_is_one_line(workspace, tmp_path):
    capture = tmp_path / "capture" / "x.jsonl"
    capture.parent.mkdir()
    capture.write_text(json.dumps({
        "captureData": {"endpointOutput": {"data": "[0.2, 0.8]", "encoding": "JSON"}},
        "eventMetadata": {"inferenceTime": "2026-01-01T00:00:00Z"}}) + "\n")
    existing = tmp_path / "report.md"
    existing.write_text("mine")
    result = scones(workspace, "monitor", "report", "--source", str(capture.parent),
                    "--out", str(existing))
    assert_one_line_error(result, re.escape(str(existing)))
    assert existing.read_text() == "mine"


def test_a_locked_registry_is_one_line_naming_the_holder(workspace, small_model_tar):
    from scones.config import load_config

    config = load_config("local", {"local.workspace": str(workspace)})
    register_model(config, small_model_tar)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time\n"
         "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "db.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\ntime.sleep(60)\n",
         str(workspace / "registry.sqlite")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = scones(workspace, "registry", "approve", "1",
                        env=clean_env(SCONES_SQLITE_BUSY_TIMEOUT_S="0.5"))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert_one_line_error(result, rf"locked by another process \(pid {holder.pid}\) .*"
                                  "try again when it finishes")


def test_a_damaged_registry_is_one_line_on_every_command(workspace, small_model_tar):
    from scones.config import load_config

    config = load_config("local", {"local.workspace": str(workspace)})
    register_model(config, small_model_tar)
    (workspace / "registry.sqlite").write_bytes(b"\0" * 8192)
    for args in (["registry", "list"], ["pipeline", "executions"], ["endpoint", "status"],
                 ["registry", "approve", "1"]):
        assert_one_line_error(scones(workspace, *args),
                              r"registry .* is damaged .*move it aside|restore")
