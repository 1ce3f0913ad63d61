"""The local SageMaker endpoint: a real HTTP server on 127.0.0.1.

It loads a model.tar.gz the way SageMaker's PyTorch serving container does (extract it,
import code/inference.py, call model_fn(model_dir), then per request input_fn ->
predict_fn -> output_fn) and answers both the container contract (GET /ping,
POST /invocations) and the SageMaker Runtime route (POST /endpoints/{name}/invocations),
so a plain boto3 `sagemaker-runtime` client reaches it through
AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=http://127.0.0.1:PORT.

Which model it serves: the endpoint state file <workspace>/endpoints/<name>.json
(written on approval/deploy; re-read whenever its mtime changes), else the registry's
newest Approved version, else - before any approval - the newest registered one.
Sampled invocations are captured in SageMaker's data-capture JSON Lines layout.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import logging
import random
import re
import shutil
import sys
import tarfile
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pipelines.config import Config
from pipelines.errors import SconesError
from pipelines.storage import LocalObjectStore, split_s3_url
from workflow.deployment import endpoint_state_path  # the state file's one definition

LOG = logging.getLogger("scones.endpoint")

# The account moto and the local configs use; AWS names it in "endpoint not found".
LOCAL_ACCOUNT_ID = "123456789012"
PRODUCTION_VARIANT = "AllTraffic"
# What SageMaker's inference toolkit answers when the caller accepts anything.
DEFAULT_ACCEPT = "application/json"

_IMPORT_LOCK = threading.Lock()  # sys.path is process-wide: one model import at a time


def default_capture_config(config: Config) -> dict:
    """Data capture as `scones endpoint deploy` would configure it."""
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": config.monitoring.capture_sampling_percentage,
        "DestinationS3Uri": f"s3://{config.aws.bucket}/datacapture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
    }


# --------------------------------------------------------------------------- models


class ModelLoadError(SconesError):
    """A model archive that cannot be served: missing, not a tarball, or no usable code."""


@dataclass
class ServedModel:
    """One model.tar.gz, extracted and loaded through its own code/inference.py."""

    tar_path: Path
    version: int | None
    package_arn: str | None
    source: str                 # where the choice came from, for humans
    model_dir: Path
    module: Any
    model: Any

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        """input_fn -> predict_fn -> output_fn, as the PyTorch serving container does."""
        data = self.module.input_fn(body, content_type)
        prediction = self.module.predict_fn(data, self.model)
        result = self.module.output_fn(prediction, accept)
        if isinstance(result, tuple):  # the toolkit lets output_fn pick the content type
            result, accept = result
        if isinstance(result, str):
            result = result.encode("utf-8")
        return bytes(result), accept

    def close(self) -> None:
        shutil.rmtree(self.model_dir, ignore_errors=True)


def load_model_archive(tar_path: Path, *, version: int | None = None,
                       package_arn: str | None = None, source: str = "") -> ServedModel:
    """Extract model.tar.gz to a fresh folder and load it through code/inference.py."""
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise ModelLoadError(f"model archive not found: {tar_path}")
    model_dir = Path(tempfile.mkdtemp(prefix="scones-model-"))
    try:
        try:
            with tarfile.open(tar_path, "r:*") as archive:
                archive.extractall(model_dir, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise ModelLoadError(f"{tar_path}: not a readable model.tar.gz ({exc})") from None
        script = model_dir / "code" / "inference.py"
        if not script.is_file():
            raise ModelLoadError(f"{tar_path}: has no code/inference.py, so the serving "
                                 "container would not know how to load it")
        module = _import_isolated(script, f"_scones_inference_{uuid.uuid4().hex}")
        missing = [name for name in ("model_fn", "input_fn", "predict_fn", "output_fn")
                   if not callable(getattr(module, name, None))]
        if missing:
            raise ModelLoadError(f"{tar_path}: code/inference.py lacks {', '.join(missing)}")
        model = module.model_fn(str(model_dir))
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise
    return ServedModel(tar_path=tar_path, version=version, package_arn=package_arn,
                       source=source, model_dir=model_dir, module=module, model=model)


def _import_isolated(script: Path, unique_name: str):
    """Import a model's inference.py under a unique name, its code/ folder on sys.path only
    while importing, so two models' code (both 'inference') can live in one process."""
    code_dir = str(script.parent)
    with _IMPORT_LOCK:
        sys.path.insert(0, code_dir)
        try:
            spec = importlib.util.spec_from_file_location(unique_name, script)
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(unique_name, None)
                raise
        finally:
            sys.path.remove(code_dir)
    return module


@dataclass(frozen=True)
class ModelChoice:
    tar_path: Path
    version: int | None
    package_arn: str | None
    source: str


def choose_from_registry(config: Config, model_version: int | None = None) -> ModelChoice:
    """The explicit version, else the newest Approved, else the newest registered one."""
    from pipelines.registry import open_registry  # the registry is only needed here

    registry = open_registry(config)
    if model_version is not None:
        package = registry.describe(model_version)
        source = f"model version {model_version} (chosen explicitly)"
    else:
        package = registry.latest(status="Approved")
        source = "newest Approved version in the registry"
        if package is None:
            candidates = [p for p in registry.list_packages()
                          if p.get("ModelApprovalStatus") != "Rejected"]
            if not candidates:
                raise SconesError("no model to serve: the registry has no registered model "
                                  "version - run `scones pipeline run` first")
            newest = max(candidates, key=lambda p: int(p["ModelPackageVersion"]))
            package = registry.describe(int(newest["ModelPackageVersion"]))
            source = "newest registered version (none is Approved yet)"
            print(f"warning: no model version is Approved yet; serving version "
                  f"{package['ModelPackageVersion']} "
                  f"({package.get('ModelApprovalStatus')}) - approve one with "
                  "`scones registry approve`", file=sys.stderr)
    local = package.get("LocalModelData")
    if not local:
        raise SconesError(f"model version {package.get('ModelPackageVersion')} has no local "
                          "model.tar.gz (LocalModelData); it was not built locally")
    return ModelChoice(Path(local), int(package["ModelPackageVersion"]),
                       package.get("ModelPackageArn"), source)


def read_endpoint_state(path: Path) -> dict:
    """The endpoint state file, checked for the fields the server needs."""
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SconesError(f"{path}: endpoint state file is not valid JSON ({exc})") from None
    if not isinstance(state, dict) or not state.get("LocalModelData"):
        raise SconesError(f"{path}: endpoint state file has no LocalModelData "
                          "(the model.tar.gz to serve)")
    return state


# --------------------------------------------------------------------------- capture


class DataCaptureWriter:
    """Appends SageMaker data-capture records, one file per hour, laid out as in S3:
    <DestinationS3Uri>/<endpoint>/AllTraffic/YYYY/MM/DD/HH/<MM-SS-mmm>-<uuid>.jsonl."""

    def __init__(self, store: LocalObjectStore, endpoint_name: str):
        self.store = store
        self.endpoint_name = endpoint_name
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str], Path] = {}  # (destination, hour) -> open file

    def capture(self, capture_config: dict, body: bytes, content_type: str,
                output: bytes, output_type: str, when: datetime | None = None) -> Path | None:
        if not capture_config.get("EnableCapture"):
            return None
        percentage = float(capture_config.get("InitialSamplingPercentage", 100))
        if random.random() * 100 >= percentage:
            return None
        modes = {o.get("CaptureMode") for o in capture_config.get("CaptureOptions") or
                 [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}
        when = when or datetime.now(timezone.utc)
        capture: dict[str, Any] = {}
        if "Input" in modes:
            capture["endpointInput"] = {
                "observedContentType": content_type, "mode": "INPUT",
                "data": base64.b64encode(body).decode("ascii"), "encoding": "BASE64"}
        if "Output" in modes:
            media_type = output_type.split(";")[0].strip()
            header = capture_config.get("CaptureContentTypeHeader")
            # SageMaker stores text as-is only for the content types the config lists;
            # without that list we do so for JSON, the classifier's output.
            is_json = (media_type in header.get("JsonContentTypes", []) if header
                       else media_type.endswith("json"))
            capture["endpointOutput"] = {
                "observedContentType": output_type, "mode": "OUTPUT",
                "data": output.decode("utf-8") if is_json
                else base64.b64encode(output).decode("ascii"),
                "encoding": "JSON" if is_json else "BASE64"}
        record = {
            "captureData": capture,
            "eventMetadata": {"eventId": str(uuid.uuid4()),
                              "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "eventVersion": "0",
        }
        line = json.dumps(record, separators=(",", ":")) + "\n"
        destination = capture_config.get("DestinationS3Uri", "").rstrip("/")
        split_s3_url(destination)  # a malformed destination is a StorageError, not a crash
        hour = when.strftime("%Y/%m/%d/%H")
        with self._lock:
            path = self._files.get((destination, hour))
            if path is None:
                name = f"{when:%M-%S}-{when.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
                path = self.store.path_for(
                    f"{destination}/{self.endpoint_name}/{PRODUCTION_VARIANT}/{hour}/{name}")
                path.parent.mkdir(parents=True, exist_ok=True)
                self._files[(destination, hour)] = path
            with path.open("a", encoding="utf-8") as out:
                out.write(line)  # one write per record: a reader never sees half a line
        return path


# --------------------------------------------------------------------------- server


class InvocationError(Exception):
    """An invocation the model code refused (its status_code) or failed (500)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Serving:
    model: ServedModel
    capture_config: dict
    state_mtime_ns: int | None = None
    state: dict = field(default_factory=dict)


class EndpointService:
    """Which model to serve (re-checked per request), invocation, and capture."""

    def __init__(self, config: Config, endpoint_name: str | None = None,
                 model_version: int | None = None, model_tar: Path | None = None):
        self.config = config
        self.endpoint_name = endpoint_name or config.workflow.endpoint_name
        self.state_path = endpoint_state_path(config, self.endpoint_name)
        self.capture_writer = DataCaptureWriter(
            LocalObjectStore(config.workspace / "s3"), self.endpoint_name)
        self._lock = threading.Lock()
        self._pinned: ModelChoice | None = None
        if model_tar is not None:
            self._pinned = ModelChoice(Path(model_tar), model_version, None,
                                       f"archive {model_tar} (chosen explicitly)")
        elif model_version is not None:
            self._pinned = choose_from_registry(config, model_version)
        self._fallback: ModelChoice | None = None
        self._serving: _Serving | None = None
        self.current()  # load now: a missing model is an error at start, not per request

    def current(self) -> _Serving:
        with self._lock:
            if self._pinned is not None:
                if self._serving is None:
                    self._serving = _Serving(self._load(self._pinned),
                                             default_capture_config(self.config))
                return self._serving
            try:
                mtime = self.state_path.stat().st_mtime_ns
            except FileNotFoundError:
                mtime = None
            if mtime is not None:
                if self._serving is None or self._serving.state_mtime_ns != mtime:
                    self._switch_to_state_file(mtime)
                return self._serving
            if self._serving is None or self._serving.state_mtime_ns is not None:
                self._fallback = self._fallback or choose_from_registry(self.config)
                self._replace(_Serving(self._load(self._fallback),
                                       default_capture_config(self.config)))
            return self._serving

    def _switch_to_state_file(self, mtime: int) -> None:
        state = read_endpoint_state(self.state_path)
        capture = state.get("DataCaptureConfig") or {"EnableCapture": False}
        choice = ModelChoice(Path(state["LocalModelData"]), state.get("ModelPackageVersion"),
                             state.get("ModelPackageArn"), f"endpoint state {self.state_path}")
        if self._serving is not None and self._serving.model.tar_path == choice.tar_path \
                and self._serving.model.version == choice.version:
            model = self._serving.model  # same deployment, only e.g. capture changed
        else:
            model = self._load(choice)
            if self._serving is not None:
                print(f"endpoint {self.endpoint_name}: now serving model version "
                      f"{choice.version} ({choice.tar_path})", file=sys.stderr)
        self._replace(_Serving(model, capture, mtime, state))

    def _replace(self, serving: _Serving) -> None:
        old = self._serving
        self._serving = serving
        if old is not None and old.model is not serving.model:
            old.model.close()

    @staticmethod
    def _load(choice: ModelChoice) -> ServedModel:
        return load_model_archive(choice.tar_path, version=choice.version,
                                  package_arn=choice.package_arn, source=choice.source)

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        serving = self.current()
        try:
            output, output_type = serving.model.invoke(body, content_type, accept)
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if isinstance(status, int) and 400 <= status < 600:
                raise InvocationError(status, str(exc)) from None
            LOG.exception("endpoint %s: model code failed", self.endpoint_name)
            raise InvocationError(500, f"{type(exc).__name__}: {exc}") from None
        self.capture_writer.capture(serving.capture_config, body, content_type,
                                    output, output_type)
        return output, output_type

    def close(self) -> None:
        with self._lock:
            if self._serving is not None:
                self._serving.model.close()
                self._serving = None


_RUNTIME_ROUTE = re.compile(r"^/endpoints/(?P<name>[^/?]+)/invocations/?(\?.*)?$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: botocore pools its connections
    # Headers and body go out in two writes; with Nagle on, a kept-alive connection then
    # waits for the client's delayed ACK (~40 ms) on every response.
    disable_nagle_algorithm = True
    service: EndpointService  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_aws_error(self, status: int, code: str, message: str, **members: Any) -> None:
        body = json.dumps({"message": message, **members}).encode()
        self._send(status, body, "application/json", {"x-amzn-ErrorType": code})

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/ping":
            self._send(404, b'{"message": "not found"}', "application/json")
            return
        try:
            self.service.current()
        except Exception as exc:  # the container reports unhealthy; the reason goes to the log
            LOG.error("ping: cannot load the model: %s", exc)
            self._send(500, json.dumps({"message": str(exc)}).encode(), "application/json")
            return
        self._send(200, b"\n", "text/plain")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        content_type = self.headers.get("Content-Type") or "application/octet-stream"
        accept = self.headers.get("Accept") or DEFAULT_ACCEPT
        if accept.strip() == "*/*":
            accept = DEFAULT_ACCEPT
        path = self.path.split("?")[0]
        runtime = _RUNTIME_ROUTE.match(self.path)
        if runtime:
            name = runtime.group("name")
            if name != self.service.endpoint_name:
                self._send_aws_error(400, "ValidationError",
                                     f"Endpoint {name} of account {LOCAL_ACCOUNT_ID} not found.")
                return
        elif path != "/invocations":
            self._send(404, b'{"message": "not found"}', "application/json")
            return
        try:
            output, output_type = self.service.invoke(body, content_type, accept)
        except InvocationError as exc:
            if runtime:  # the runtime wraps any container error as AWS does: 424 ModelError
                self._send_aws_error(
                    424, "ModelError",
                    f"Received {'client' if exc.status < 500 else 'server'} error "
                    f"({exc.status}) from primary with message \"{exc.message}\".",
                    OriginalStatusCode=exc.status, OriginalMessage=exc.message)
            else:
                self._send(exc.status, json.dumps({"message": exc.message}).encode(),
                           "application/json")
            return
        except Exception as exc:  # the server itself failed (e.g. a broken state file)
            LOG.exception("endpoint %s: invocation failed", self.service.endpoint_name)
            if runtime:
                self._send_aws_error(500, "InternalFailure", str(exc))
            else:
                self._send(500, json.dumps({"message": str(exc)}).encode(), "application/json")
            return
        self._send(200, output, output_type,
                   {"x-Amzn-Invoked-Production-Variant": PRODUCTION_VARIANT})


class LocalEndpoint:
    """A running local endpoint; a context manager. .url, .port, .stop()."""

    def __init__(self, service: EndpointService, host: str, port: int):
        handler = type("EndpointHandler", (_Handler,), {"service": service})
        self.service = service
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"endpoint-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint_name(self) -> str:
        return self.service.endpoint_name

    @property
    def model(self) -> ServedModel:
        return self.service.current().model

    @property
    def model_version(self) -> int | None:
        return self.model.version

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        self.service.close()

    def __enter__(self) -> "LocalEndpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_endpoint(config: Config, host: str = "127.0.0.1", port: int = 0,
                   model_version: int | None = None, model_tar: Path | None = None,
                   endpoint_name: str | None = None) -> LocalEndpoint:
    """Load the model (see module doc for which) and serve it on host:port (0: any free)."""
    service = EndpointService(config, endpoint_name, model_version=model_version,
                              model_tar=model_tar)
    try:
        return LocalEndpoint(service, host, port)
    except OSError as exc:
        service.close()
        raise SconesError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- child process

# How long the parent waits for the child to load its model and listen (torch import included).
CHILD_START_TIMEOUT_S = 120.0
CHILD_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServingInfo:
    """What an endpoint process served when it started (the state file may change it later)."""

    version: int | None
    tar_path: Path
    source: str


class EndpointProcess:
    """The local endpoint in a child process (`python -m workflow.endpoint`), so the model
    and its HTTP server run under their own GIL, beside the workflow engine's. A context
    manager: .url, .endpoint_name, .pid, .started_serving, .stop().

    The parent pickles its Config to the child's stdin and keeps that pipe open: the child
    stops when it closes, so it never outlives the parent, however the parent ends. The
    child's stderr is relayed to ours; a startup failure surfaces as the child's SconesError
    message."""

    def __init__(self, config: Config, model_version: int | None = None,
                 model_tar: Path | None = None, endpoint_name: str | None = None):
        import pickle
        import subprocess

        self.endpoint_name = endpoint_name or config.workflow.endpoint_name
        self._process = subprocess.Popen(
            [sys.executable, "-m", "workflow.endpoint"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self._process.pid
        self._stderr_lines: list[str] = []  # held until started: a failure's message
        self._stderr_lock = threading.Lock()
        self._relaying = False
        self._stderr_thread = threading.Thread(target=self._drain_stderr,
                                               name=f"endpoint-stderr-{self.pid}", daemon=True)
        self._stderr_thread.start()
        try:
            self._process.stdin.write(pickle.dumps({
                "config": config, "endpoint_name": self.endpoint_name,
                "model_version": model_version,
                "model_tar": Path(model_tar).resolve() if model_tar is not None else None}))
            self._process.stdin.flush()
            ready = self._read_ready_line()
            self.url = ready["url"]
            self.started_serving = ServingInfo(ready["version"], Path(ready["tar_path"]),
                                               ready["source"])
            self._check_ping()
        except BaseException:
            self.stop()
            raise
        with self._stderr_lock:
            sys.stderr.writelines(self._stderr_lines)
            self._relaying = True

    def _drain_stderr(self) -> None:
        # Always drained: a child blocked on a full stderr pipe would stop answering.
        for raw in self._process.stderr:
            line = raw.decode("utf-8", "replace")
            with self._stderr_lock:
                if self._relaying:
                    sys.stderr.write(line)
                else:
                    self._stderr_lines.append(line)

    def _read_ready_line(self) -> dict:
        import select
        import time

        deadline = time.monotonic() + CHILD_START_TIMEOUT_S
        stdout = self._process.stdout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SconesError(f"the local endpoint process did not start within "
                                  f"{CHILD_START_TIMEOUT_S:.0f} s")
            readable, _, _ = select.select([stdout], [], [], remaining)
            if readable:
                break
        line = stdout.readline()
        if line:
            return json.loads(line)
        # No ready line: the child ended; its stderr says why.
        returncode = self._process.wait()
        self._stderr_thread.join()
        lines = [line.rstrip("\n") for line in self._stderr_lines if line.strip()]
        if lines and lines[-1].startswith("error: "):
            raise SconesError(lines[-1][len("error: "):])
        tail = "\n".join(lines[-20:])
        raise SconesError(f"the local endpoint process exited with code {returncode} before "
                          f"serving" + (f":\n{tail}" if tail else ""))

    def _check_ping(self) -> None:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=30) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            message = json.loads(exc.read() or b"{}").get("message") or str(exc)
            raise SconesError(f"the local endpoint at {self.url} is unhealthy: {message}") \
                from None

    def stop(self) -> None:
        import subprocess

        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(CHILD_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            try:
                pipe.close()
            except OSError:  # stdin: the child is gone, a broken pipe on flush is expected
                pass
        self._stderr_thread.join()
        self._process.stderr.close()

    def __enter__(self) -> "EndpointProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_child() -> int:
    """`python -m workflow.endpoint`, started by EndpointProcess: read the request pickled
    on stdin, serve, print one JSON "ready" line on stdout, then serve until SIGTERM or
    until stdin closes (the parent is gone)."""
    import os
    import pickle
    import signal

    # stdout carries only the ready line; anything else printed goes to stderr.
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    request = pickle.load(sys.stdin.buffer)  # the parent writes nothing after it
    stdin_fd = sys.stdin.fileno()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        endpoint = start_endpoint(request["config"], model_version=request["model_version"],
                                  model_tar=request["model_tar"],
                                  endpoint_name=request["endpoint_name"])
    except SconesError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2

    def stop_when_parent_is_gone() -> None:
        # The raw fd, not sys.stdin: a daemon thread blocked inside a buffered reader's
        # lock makes interpreter shutdown abort ("could not acquire lock ... <stdin>").
        while os.read(stdin_fd, 65536):
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # the one way to stop: SystemExit in main

    try:
        threading.Thread(target=stop_when_parent_is_gone, daemon=True).start()
        model = endpoint.model
        protocol.write(json.dumps({"url": endpoint.url, "version": model.version,
                                   "tar_path": str(model.tar_path),
                                   "source": model.source}) + "\n")
        protocol.close()
        threading.Event().wait()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the cleanup
        endpoint.stop()
    return 0


if __name__ == "__main__":
    from workflow.endpoint import serve_child as _serve_child  # the module, not a __main__ copy

    sys.exit(_serve_child())
