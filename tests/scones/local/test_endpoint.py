"""The local endpoint over real HTTP, called with a real boto3 sagemaker-runtime client."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from lambdas.classify_image_batch import BATCH_CONTENT_TYPE, invoke_batch
from scones.config import load_config
from scones.errors import SconesError
from scones.local.deployment_state import EndpointStateFile
from scones.local.endpoint.server import start_endpoint
from workflow.monitoring import parse_capture_lines
from helpers import register_model, scones, sitecustomize_env

# A second model whose code is ALSO named inference.py: both must live in one process.
CONSTANT_MODEL_CODE = '''
import json
def model_fn(model_dir):
    return json.load(open(model_dir + "/answer.json"))
def input_fn(body, content_type):
    return body
def predict_fn(data, model):
    return model
def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
'''


@pytest.fixture
def config(tmp_path):
    return load_config("local", {"local.workspace": str(tmp_path / "ws")})


@pytest.fixture(scope="module")
def image_bytes(sample_data_dir) -> bytes:
    return sorted((sample_data_dir / "bicycle").glob("*.png"))[0].read_bytes()


def write_state(config, model_tar: Path, version: int, sampling: int = 100) -> Path:
    """The endpoint state file, as `scones endpoint deploy` writes it (the contract)."""
    path = EndpointStateFile.of(config).path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "EndpointName": config.workflow.endpoint_name, "EndpointStatus": "InService",
        "ModelPackageVersion": version,
        "ModelPackageArn": f"arn:aws:sagemaker:us-east-1:123456789012:model-package/g/{version}",
        "ModelDataUrl": f"s3://{config.aws.bucket}/models/{version}/model.tar.gz",
        "LocalModelData": str(model_tar),
        "DataCaptureConfig": {
            "EnableCapture": True, "InitialSamplingPercentage": sampling,
            "DestinationS3Uri": f"s3://{config.aws.bucket}/datacapture",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]},
        "LastModifiedTime": "2026-01-01T00:00:00Z"}))
    return path


def constant_model_tar(folder: Path, answer: list[float]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in (("code/inference.py", CONSTANT_MODEL_CODE),
                           ("answer.json", json.dumps(answer))):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def runtime_client(url: str):
    return boto3.client("sagemaker-runtime", region_name="us-east-1", endpoint_url=url,
                        aws_access_key_id="local", aws_secret_access_key="local",
                        config=BotoConfig(retries={"max_attempts": 1}))


def capture_files(config) -> list[Path]:
    return sorted((config.local.workspace / "s3" / config.aws.bucket / "datacapture").rglob("*.jsonl"))


def test_ping_and_invoke_through_boto3_serve_the_deployed_model(config, small_model_tar,
                                                                image_bytes):
    write_state(config, small_model_tar, version=1)
    with start_endpoint(config) as endpoint:
        assert endpoint.model_version == 1
        with urllib.request.urlopen(f"{endpoint.url}/ping") as response:
            assert response.status == 200
        answer = runtime_client(endpoint.url).invoke_endpoint(
            EndpointName=config.workflow.endpoint_name, ContentType="image/png",
            Accept="application/json", Body=image_bytes)
        assert answer["ContentType"] == "application/json"
        assert answer["InvokedProductionVariant"] == "AllTraffic"
        scores = json.loads(answer["Body"].read())
        assert len(scores) == 2 and abs(sum(scores) - 1) < 1e-4
        # The container route answers the same model.
        request = urllib.request.Request(f"{endpoint.url}/invocations", data=image_bytes,
                                         headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request) as response:
            assert json.loads(response.read()) == pytest.approx(scores)


def test_bad_bytes_unknown_endpoint_and_capture_layout(config, small_model_tar, image_bytes):
    write_state(config, small_model_tar, version=3)
    with start_endpoint(config) as endpoint:
        client = runtime_client(endpoint.url)
        with pytest.raises(ClientError) as bad:
            client.invoke_endpoint(EndpointName=config.workflow.endpoint_name,
                                   ContentType="image/png", Body=b"this is not a png")
        assert bad.value.response["Error"]["Code"] == "ModelError"
        assert bad.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert bad.value.response["OriginalStatusCode"] in (400, 415)
        request = urllib.request.Request(f"{endpoint.url}/invocations", data=b"",
                                         headers={"Content-Type": "image/png"})
        with pytest.raises(urllib.error.HTTPError) as raw:
            urllib.request.urlopen(request)
        assert 400 <= raw.value.code < 500

        with pytest.raises(ClientError) as unknown:
            client.invoke_endpoint(EndpointName="no-such-endpoint", ContentType="image/png",
                                   Body=image_bytes)
        assert unknown.value.response["Error"]["Code"] == "ValidationError"
        assert "no-such-endpoint" in unknown.value.response["Error"]["Message"]
        assert capture_files(config) == []  # failed invocations are not captured

        body = client.invoke_endpoint(EndpointName=config.workflow.endpoint_name,
                                      ContentType="image/png", Body=image_bytes)["Body"].read()
        client.invoke_endpoint(EndpointName=config.workflow.endpoint_name,
                               ContentType="image/png", Body=image_bytes)
    files = capture_files(config)
    assert len(files) == 1  # both records of this hour go to one file
    relative = files[0].relative_to(config.local.workspace / "s3" / config.aws.bucket).as_posix()
    assert re.fullmatch(
        rf"datacapture/{config.workflow.endpoint_name}/AllTraffic/\d{{4}}/\d\d/\d\d/\d\d/"
        r"\d\d-\d\d-\d{3}-[0-9a-f-]{36}\.jsonl", relative), relative
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(records) == 2
    record = records[0]
    assert record["eventVersion"] == "0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["eventMetadata"]["inferenceTime"])
    captured_in = record["captureData"]["endpointInput"]
    assert (captured_in["mode"], captured_in["encoding"], captured_in["observedContentType"]) == \
        ("INPUT", "BASE64", "image/png")
    assert base64.b64decode(captured_in["data"]) == image_bytes
    captured_out = record["captureData"]["endpointOutput"]
    assert (captured_out["mode"], captured_out["encoding"]) == ("OUTPUT", "JSON")
    assert json.loads(captured_out["data"]) == json.loads(body)


def test_a_changed_state_file_switches_model_without_restart(config, small_model_tar,
                                                             image_bytes, tmp_path):
    state = write_state(config, small_model_tar, version=1, sampling=100)
    other = constant_model_tar(tmp_path / "v2", [0.25, 0.75])
    with start_endpoint(config) as endpoint:
        client = runtime_client(endpoint.url)
        first = json.loads(client.invoke_endpoint(
            EndpointName=config.workflow.endpoint_name, ContentType="image/png",
            Body=image_bytes)["Body"].read())
        assert first != [0.25, 0.75]
        write_state(config, other, version=2, sampling=100)
        os.utime(state, ns=(0, state.stat().st_mtime_ns + 1_000_000_000))  # a visibly new mtime
        second = json.loads(client.invoke_endpoint(
            EndpointName=config.workflow.endpoint_name, ContentType="image/png",
            Body=image_bytes)["Body"].read())
        assert second == [0.25, 0.75]
        assert endpoint.model_version == 2


def test_zero_sampling_captures_nothing(config, small_model_tar, image_bytes):
    write_state(config, small_model_tar, version=1, sampling=0)
    with start_endpoint(config) as endpoint:
        runtime_client(endpoint.url).invoke_endpoint(
            EndpointName=config.workflow.endpoint_name, ContentType="image/png", Body=image_bytes)
    assert capture_files(config) == []


def test_without_state_file_serves_newest_registered_version_with_a_warning(
        config, small_model_tar, capsys):
    from scones.backend import backend_for

    with pytest.raises(SconesError, match="scones pipeline run"):
        start_endpoint(config)
    registry = backend_for(config).registry()
    for _ in range(2):
        register_model(config, small_model_tar)
    with start_endpoint(config) as endpoint:
        assert endpoint.model_version == 2
    assert "no model version is Approved" in capsys.readouterr().err
    registry.approve(1)
    with start_endpoint(config) as endpoint:
        assert endpoint.model_version == 1  # an Approved version wins over a newer pending one


def test_endpoint_process_serves_captures_and_stops_with_the_workflow(config, tmp_path):
    from scones.local.endpoint.process import EndpointProcess

    write_state(config, constant_model_tar(tmp_path / "m", [0.25, 0.75]), version=3)
    with EndpointProcess(config) as endpoint:
        assert endpoint.started_serving.version == 3
        answer = runtime_client(endpoint.url).invoke_endpoint(
            EndpointName=config.workflow.endpoint_name, ContentType="image/png", Body=b"x")
        assert json.loads(answer["Body"].read()) == [0.25, 0.75]
        assert len(capture_files(config)) == 1  # the child process captured it
        url = endpoint.url
    with pytest.raises(urllib.error.URLError):  # stopped: nothing listens any more
        urllib.request.urlopen(f"{url}/ping", timeout=5)


def test_endpoint_process_start_errors_are_the_servers_own_messages(config):
    from scones.local.endpoint.process import EndpointProcess

    with pytest.raises(SconesError, match="no registered model version.*scones pipeline run"):
        EndpointProcess(config)
    EndpointStateFile.of(config).path.parent.mkdir(parents=True)
    EndpointStateFile.of(config).path.write_text("{not json")
    with pytest.raises(SconesError, match="endpoint state file .* is not valid JSON.*scones endpoint deploy"):
        EndpointProcess(config)


def test_endpoint_process_ends_when_its_parent_is_killed(config, tmp_path):
    """No leaked server: the child watches the pipe its parent holds open."""
    import signal
    import subprocess
    import sys
    import time

    write_state(config, constant_model_tar(tmp_path / "m", [1.0, 0.0]), version=1)
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from scones.config import load_config\n"
         "from scones.local.endpoint.process import EndpointProcess\n"
         f"endpoint = EndpointProcess(load_config('local', {{'local.workspace': "
         f"{str(config.local.workspace)!r}}}))\n"
         "print(endpoint.url, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        url = parent.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        urllib.request.urlopen(f"{url}/ping", timeout=5).close()
    finally:
        parent.send_signal(signal.SIGKILL)  # no cleanup runs in the parent
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=5).close()
        except urllib.error.URLError:
            break  # refused: the orphaned child stopped serving
        except ConnectionResetError:
            pass  # it is shutting down
        assert time.monotonic() < deadline, f"the endpoint at {url} outlived its parent"
        time.sleep(0.1)


@pytest.mark.parametrize("inherited_sigint", ["default", "ignored"])
def test_scones_endpoint_serve_as_a_user_runs_it(config, tmp_path, inherited_sigint):
    # The CLI on its own: it says where it serves, answers boto3 there, follows a new
    # deployment without a restart, and stops cleanly on Ctrl-C (SIGINT) - also when it was
    # started with SIGINT ignored, as a shell script's `cmd &` or a pytest-xdist worker
    # starts it (Python then installs no Ctrl-C handler of its own).
    import signal
    import subprocess
    import sys

    write_state(config, constant_model_tar(tmp_path / "v1", [0.9, 0.1]), version=1)
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "endpoint", "serve", "--port", "0",
         "--set", f"local.workspace={config.local.workspace}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"},
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        if inherited_sigint == "ignored" else None)
    try:
        first_line = server.stdout.readline()
        match = re.search(r"serving model version 1 .* at (http://127\.0\.0\.1:\d+)", first_line)
        assert match, f"unexpected first line {first_line!r}"
        client = runtime_client(match.group(1))

        def answer() -> list[float]:
            return json.loads(client.invoke_endpoint(
                EndpointName=config.workflow.endpoint_name, ContentType="image/png",
                Body=b"\x89PNG any bytes: the constant model ignores them")["Body"].read())

        assert answer() == [0.9, 0.1]
        state = write_state(config, constant_model_tar(tmp_path / "v2", [0.2, 0.8]), version=2)
        os.utime(state, (state.stat().st_atime, state.stat().st_mtime + 5))
        assert answer() == [0.2, 0.8]
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
        stderr = server.stderr.read()
        assert "stopped" in stderr and "Traceback" not in stderr
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.slow
def test_a_stopped_server_whose_clean_up_hangs_still_exits_and_says_where(config, tmp_path):
    """Ctrl-C must end `scones endpoint serve` even when its clean-up never returns: here
    LocalEndpoint.stop is made to hang (a sitecustomize in the server's own interpreter).
    Past the deadline the process exits 1 with every thread's stack on stderr."""
    import signal
    import subprocess
    import sys
    import time

    from scones.processes import STOP_DEADLINE_S

    write_state(config, constant_model_tar(tmp_path / "v1", [0.9, 0.1]), version=1)
    hook = sitecustomize_env(tmp_path / "hook",
                             "import time\n"
                             "import scones.local.endpoint.server as server\n"
                             "def stop_that_hangs(self):\n"
                             "    time.sleep(3600)\n"
                             "server.LocalEndpoint.stop = stop_that_hangs\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "endpoint", "serve", "--port", "0",
         "--set", f"local.workspace={config.local.workspace}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1", **hook})
    try:
        assert "serving model version 1" in server.stdout.readline()
        stopped_at = time.monotonic()
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=STOP_DEADLINE_S + 30) == 1
        took = time.monotonic() - stopped_at
        assert STOP_DEADLINE_S - 1 <= took
        stderr = server.stderr.read()
        assert "stopped" in stderr and "stop_that_hangs" in stderr
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


# ----------------------------------------------------------------- a hostile HTTP client


def raw_exchange(url: str, request: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send raw bytes on a fresh socket; the status, headers and body of the answer."""
    import http.client
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body


@pytest.fixture
def constant_endpoint(config, tmp_path):
    with start_endpoint(config, model_tar=constant_model_tar(tmp_path / "c", [0.5, 0.5]),
                        channel_timeout_s=1) as endpoint:
        yield endpoint


@pytest.mark.parametrize("length", ["abc", "1e15", "-5", "10, 12", " "])
def test_a_content_length_that_is_not_a_byte_count_is_a_json_400(constant_endpoint, length):
    status, headers, body = raw_exchange(
        constant_endpoint.url,
        f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert "Content-Length" in json.loads(body)["message"]


@pytest.mark.parametrize("length", [6 * 1024 * 1024 + 1, 99999999999999999999])
def test_a_body_over_6_mb_is_a_413_without_being_read(constant_endpoint, length):
    import time

    started = time.monotonic()
    for path in ("/invocations", f"/endpoints/{constant_endpoint.endpoint_name}/invocations"):
        status, headers, body = raw_exchange(
            constant_endpoint.url,
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Content-Length: {length}\r\n\r\n".encode() + b"\x89PNG" * 1000)
        assert status == 413
        assert headers["content-type"] == "application/json"
        assert "6291456 bytes" in json.loads(body)["message"]
    assert time.monotonic() - started < 5  # not waiting for the 6 MB that never comes


@pytest.mark.parametrize("method,path,allowed", [
    ("PUT", "/invocations", "POST"), ("DELETE", "/invocations", "POST"),
    ("OPTIONS", "/ping", "GET"), ("PATCH", "/endpoints/scones-endpoint/invocations", "POST"),
    ("GET", "/invocations", "POST"), ("POST", "/ping", "GET")])
def test_other_methods_are_a_json_405_with_allow(constant_endpoint, method, path, allowed):
    status, headers, body = raw_exchange(
        constant_endpoint.url,
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    assert status == 405
    assert headers["allow"] == allowed
    assert headers["content-type"] == "application/json"
    assert method in json.loads(body)["message"]


@pytest.mark.parametrize("request_bytes, status", [
    (b"HELLO\r\n\r\n", 400), (b"GET /ping HTTP/9.9\r\n\r\n", 505),
    (b"BREW /pot HTTP/1.1\r\n\r\n", 404),
    (b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    (b"POST /invocations HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort", None)])
def test_malformed_requests_are_answered_in_json_and_never_500(constant_endpoint,
                                                               request_bytes, status):
    import socket

    if status is None:  # a short body: the server waits for the rest, then hangs up
        with pytest.raises((ConnectionError, socket.timeout)):  # RemoteDisconnected included
            raw_exchange(constant_endpoint.url, request_bytes)
    else:
        answered, headers, body = raw_exchange(constant_endpoint.url, request_bytes)
        assert answered == status
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["message"]
    # ... and the server still answers.
    assert raw_exchange(constant_endpoint.url, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200


def test_slow_and_idle_connections_hold_no_thread_and_are_timed_out(constant_endpoint):
    import socket
    import threading
    import time

    threads_before = threading.active_count()
    host, port = constant_endpoint.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(200)]
    slow = [socket.create_connection((host, int(port))) for _ in range(20)]
    try:
        for sock in slow:  # slowloris: a head that never ends
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        time.sleep(0.3)
        assert threading.active_count() <= threads_before + 16  # the worker pool at most
        started = time.monotonic()
        assert raw_exchange(constant_endpoint.url, b"GET /ping HTTP/1.1\r\n\r\n")[0] == 200
        assert time.monotonic() - started < 1.0  # not queued behind the slow ones
        deadline = time.monotonic() + 10
        for sock in idle + slow:  # each is closed by the server after the 1 s head timeout
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert sock.recv(100) == b""
        deadline = time.monotonic() + 5  # the loop forgets a closed connection on its next pass
        while constant_endpoint.open_connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert constant_endpoint.open_connections == 0
    finally:
        for sock in idle + slow:
            sock.close()


def test_64_concurrent_clients_are_all_answered(config, tmp_path):
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    model = constant_model_tar(tmp_path / "c", [0.5, 0.5])
    with start_endpoint(config, model_tar=model) as endpoint:
        host, port = endpoint.url.removeprefix("http://").split(":")

        def invoke(index: int) -> int:
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                statuses = []
                for _ in range(3):  # kept alive between requests
                    connection.request("POST", "/invocations", body=b"x" * index,
                                       headers={"Content-Type": "image/png"})
                    response = connection.getresponse()
                    response.read()
                    statuses.append(response.status)
                return max(statuses)
            finally:
                connection.close()

        with ThreadPoolExecutor(64) as pool:
            assert list(pool.map(invoke, range(64))) == [200] * 64


def test_a_port_out_of_range_is_a_named_error(config, tmp_path):
    with pytest.raises(SconesError, match="port 70000 is not a TCP port"):
        start_endpoint(config, port=70000,
                       model_tar=constant_model_tar(tmp_path / "c", [0.5, 0.5]))


def model_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("scones-model-*"))


def test_scones_endpoint_serve_stopped_by_sigterm_removes_its_model_folder(config, tmp_path):
    import signal
    import subprocess
    import sys

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    write_state(config, constant_model_tar(tmp_path / "v1", [0.9, 0.1]), version=1)
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "endpoint", "serve", "--port", "0",
         "--set", f"local.workspace={config.local.workspace}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp)})
    try:
        assert "serving model version 1" in server.stdout.readline()
        assert len(model_folders(tmp)) == 1
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert "Traceback" not in server.stderr.read()
        assert model_folders(tmp) == []
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_endpoint_process_child_stopped_by_sigterm_removes_its_model_folder(config, tmp_path,
                                                                            monkeypatch):
    import signal
    from scones.local.endpoint.process import EndpointProcess

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    write_state(config, constant_model_tar(tmp_path / "v1", [0.9, 0.1]), version=1)
    endpoint = EndpointProcess(config)
    try:
        assert len(model_folders(tmp)) == 1
        os.kill(endpoint.pid, signal.SIGTERM)
        assert endpoint._process.wait(timeout=30) == 0
        assert model_folders(tmp) == []
    finally:
        endpoint.stop()


def test_a_corrupt_state_files_advice_works(config, small_model_tar):
    import shlex
    import subprocess
    import sys

    register_model(config, small_model_tar, ModelApprovalStatus="Approved")
    state = EndpointStateFile.of(config).path
    state.parent.mkdir(parents=True)
    state.write_text('{"EndpointName": "scones-endpoint", "Model')  # a torn write

    failed = scones("endpoint", "deploy", "--version", "1", workspace=config.local.workspace,
                    timeout=120)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    advice = re.search(r"move it aside \(`(mv [^`]+)`\), then deploy again with "
                       r"`scones endpoint deploy --version N`", failed.stderr)
    assert advice, failed.stderr
    subprocess.run(shlex.split(advice.group(1)), check=True)
    deployed = scones("endpoint", "deploy", "--version", "1", workspace=config.local.workspace,
                      timeout=120)
    assert deployed.returncode == 0, deployed.stderr
    assert EndpointStateFile.of(config).read()["ModelPackageVersion"] == 1
    assert list(state.parent.glob("*.broken"))  # kept for a look


def test_set_aside_if_broken_moves_only_an_unreadable_state_file(config, small_model_tar):
    state_file = EndpointStateFile.of(config)
    assert state_file.set_aside_if_broken() is None  # absent
    write_state(config, small_model_tar, version=1)
    assert state_file.set_aside_if_broken() is None  # readable: left alone
    state_file.path.write_text("[]")
    aside = state_file.set_aside_if_broken()
    assert aside.read_text() == "[]" and state_file.read() is None


def test_a_client_that_sends_a_7_mb_body_before_reading_sees_the_413(constant_endpoint):
    request = urllib.request.Request(f"{constant_endpoint.url}/invocations",
                                     data=b"\0" * (7 * 1024 * 1024),
                                     headers={"Content-Type": "image/png"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413
    assert "6 MB" in json.loads(refused.value.read())["message"]


# ------------------------------------------- one serving contract: the container's own


def test_the_bulk_lambdas_real_batch_request_gets_one_answer_per_image(config, small_model_tar,
                                                                       image_bytes):
    """The request built by lambdas/classify_image_batch.py itself, through boto3, the HTTP
    server and sagemaker-inference's Transformer into the archive's inference.py."""
    from sagemaker_inference.transformer import Transformer


    write_state(config, small_model_tar, version=1)
    with start_endpoint(config) as endpoint:
        assert isinstance(endpoint.model.transformer, Transformer)
        client = runtime_client(endpoint.url)
        alone = json.loads(client.invoke_endpoint(
            EndpointName=config.workflow.endpoint_name, ContentType="image/png",
            Body=image_bytes)["Body"].read())
        predictions = invoke_batch(client, config.workflow.endpoint_name,
                                   [image_bytes, b"\x89PNG but cut", image_bytes],
                                   "s3://bucket/batch/")
    assert len(predictions) == 3
    # the Lambda asks for the verbose answer: probabilities with the OOD score beside them
    assert predictions[0]["probabilities"] == pytest.approx(alone, abs=1e-6)
    assert predictions[0] == predictions[2]
    assert isinstance(predictions[0]["ood_score"], float)
    assert predictions[1]["status"] == 400
    # Captured one record per invocation, as SageMaker does: the image, then the batch
    # request whole; monitoring reads the batch's two answered images as records of their own.
    paths = capture_files(config)
    records = [json.loads(line) for path in paths for line in path.read_text().splitlines()]
    assert [r["captureData"]["endpointInput"]["observedContentType"] for r in records] == [
        "image/png", BATCH_CONTENT_TYPE]
    read = [r for path in paths for r in parse_capture_lines(str(path), path.read_bytes(), 2)[0]]
    assert [base64.b64decode(r.input_base64) for r in read] == [image_bytes] * 3


@pytest.mark.parametrize("content_type, body, accept, status", [
    ("application/json", b'{"image": "x"}', None, 415),
    # The toolkit decodes JSON and CSV bodies as UTF-8 before input_fn sees them, so image
    # bytes sent as text/csv fail there: a 500 in SageMaker's container, and so here too.
    ("text/csv", "image", None, 500),
    ("image/png", "image", "text/csv", 406)])
def test_what_the_container_refuses_is_refused_locally(config, small_model_tar, image_bytes,
                                                       content_type, body, accept, status):
    write_state(config, small_model_tar, version=1)
    with start_endpoint(config) as endpoint:
        headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
        request = urllib.request.Request(f"{endpoint.url}/invocations",
                                         data=image_bytes if body == "image" else body,
                                         headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        message = json.loads(refused.value.read())["message"]
    assert refused.value.code == status, message
    assert refused.value.headers["Content-Type"] == "application/json"


def test_a_400_answer_never_shows_an_object_repr(config, small_model_tar):
    write_state(config, small_model_tar, version=1)
    with start_endpoint(config) as endpoint:
        request = urllib.request.Request(f"{endpoint.url}/invocations", data=b"not an image",
                                         headers={"Content-Type": "image/png"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        message = json.loads(refused.value.read())["message"]
    assert refused.value.code == 400
    assert "PNG/JPEG" in message and " object at 0x" not in message


def test_a_config_whose_classes_disagree_with_the_model_is_a_named_error(config,
                                                                        small_model_tar):
    from scones.local.endpoint.model_archive import ClassNamesMismatch

    write_state(config, small_model_tar, version=1)
    swapped = config.replace(classes=tuple(reversed(config.classes)))
    with pytest.raises(ClassNamesMismatch, match=r"order \['bicycle', 'motorcycle'\].*"
                                                 r"config's classes are \['motorcycle', "
                                                 r"'bicycle'\]"):
        start_endpoint(swapped)
    with start_endpoint(config) as endpoint:  # the archive's own order serves
        assert endpoint.model.class_names == list(config.classes)


def test_an_unwritable_capture_folder_drops_records_and_never_fails_a_prediction(
        config, small_model_tar, image_bytes):
    write_state(config, small_model_tar, version=1)
    bucket = config.local.workspace / "s3" / config.aws.bucket
    bucket.mkdir(parents=True, exist_ok=True)
    # A regular file where the capture folder should be: even root cannot write under it.
    (bucket / "datacapture").write_text("not a folder")
    with start_endpoint(config) as endpoint:
        client = runtime_client(endpoint.url)
        for _ in range(3):
            answer = client.invoke_endpoint(EndpointName=config.workflow.endpoint_name,
                                            ContentType="image/png", Body=image_bytes)
            assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
            assert len(json.loads(answer["Body"].read())) == 2
        with urllib.request.urlopen(f"{endpoint.url}/ping") as ping:
            assert ping.headers["X-Scones-Dropped-Capture-Records"] == "3"
    from scones.local.endpoint.capture import read_capture_drops
    from scones.workspace import Workspace

    drops = read_capture_drops(Workspace(config.local.workspace), config.workflow.endpoint_name)
    assert drops["DroppedCaptureRecords"] == 3
    assert "datacapture" in drops["LastError"]


def test_stop_ends_the_server_even_when_its_wake_up_pipe_is_gone(config, tmp_path):
    """Seen once in a full run: the loop's trigger pipe was already closed (EBADF) when the
    endpoint stopped; stop() must still end the server, not raise and leave it running."""
    write_state(config, constant_model_tar(tmp_path / "v1", [0.9, 0.1]), version=1)
    endpoint = start_endpoint(config)
    os.close(endpoint._server.trigger.trigger)  # the pipe's write end: pull_trigger fails

    endpoint.stop()

    assert not endpoint._thread.is_alive()
