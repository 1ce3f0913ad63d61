"""The local SageMaker endpoint's HTTP service on 127.0.0.1: the container contract (GET
/ping, POST /invocations) and the SageMaker Runtime route (POST
/endpoints/{name}/invocations), so a plain boto3 `sagemaker-runtime` client reaches it
through AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=http://127.0.0.1:PORT.

Which model it serves: the endpoint state file (scones.local.deployment_state; re-read whenever it
changes), else the registry's newest Approved version, else - before any approval - the
newest registered one. Every request goes through the model archive's own inference.py under
sagemaker-inference's Transformer (model_archive.py), as in SageMaker's container.

HTTP is waitress's (a kept, pure-Python, threaded WSGI server), bounded for untrusted
clients: 16 worker threads; connections are read by one asyncore loop, so an idle or slow
(slowloris) connection holds a descriptor, never a worker, and is closed after
channel_timeout_s without a byte; at most MAX_CONNECTIONS open; request heads over 64 KB
are a 431 and bodies over SageMaker's 6 MB a 413 from the head alone, unread. Every
refusal (400/404/405/411/413/431/501/505) is answered in JSON.
"""
from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask, WSGITask

from lambdas.deploy_approved_model import VARIANT_NAME
from scones.config import Config
from scones.errors import SconesError
from scones.local.deployment_state import EndpointStateFile
from scones.local.endpoint.capture import (CaptureDrops, DataCaptureWriter,
                                           default_capture_config)
from scones.local.endpoint.model_archive import (InvocationError, ModelChoice, ServedModel,
                                                 choose_from_registry, load_model_archive)
from scones.local.resources import LOCAL_ACCOUNT_ID, LocalResources

LOG = logging.getLogger("scones.endpoint")
# "Task queue depth is N": requests waiting for one of the workers, as designed under a
# burst; not a warning a person serving the endpoint can act on.
logging.getLogger("waitress.queue").setLevel(logging.ERROR)

# SageMaker's limit on an invocation's payload; a bigger body is refused (413) unread.
MAX_BODY_BYTES = 6 * 1024 * 1024
# Connections the kernel queues before accept (the old default, 5, reset clients at 32+).
LISTEN_BACKLOG = 128
# Threads that run requests. Waiting for a request costs no thread.
WORKER_THREADS = 16
# Open connections at most (idle, reading, or in a worker); beyond it waitress stops
# accepting until one closes (the kernel's backlog holds the newcomers).
MAX_CONNECTIONS = 512
# A connection that sends nothing for this long (a slow head or body, or a kept-alive
# connection with no next request) is closed. botocore reopens a closed pooled connection.
CHANNEL_TIMEOUT_S = 30
MAX_HEAD_BYTES = 64 * 1024
# A refused request's body up to this size is read and thrown away after the answer, so a
# client that sends the whole body before reading (urllib, botocore) sees the 413 rather
# than a reset connection; a bigger one is cut off.
MAX_DISCARD_BYTES = 64 * 1024 * 1024
ALLOWED_METHODS = {"/ping": "GET", "/invocations": "POST"}  # and the runtime route: POST
_RUNTIME_ROUTE = re.compile(r"^/endpoints/(?P<name>[^/?]+)/invocations/?$")
DROPPED_CAPTURE_HEADER = "X-Scones-Dropped-Capture-Records"


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
        resources = LocalResources(config)
        self.state_file = EndpointStateFile(resources.workspace, self.endpoint_name)
        self.state_path = self.state_file.path
        self.capture_writer = DataCaptureWriter(resources.object_store(), self.endpoint_name)
        self.capture_drops = CaptureDrops(resources.workspace, self.endpoint_name)
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
            mtime = self.state_file.mtime_ns()
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
        state = self.state_file.read()
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

    def _load(self, choice: ModelChoice) -> ServedModel:
        # The archive's own class_names are the truth; a config that orders the classes
        # otherwise is refused here, not served as swapped labels.
        return load_model_archive(choice.tar_path, version=choice.version,
                                  package_arn=choice.package_arn, source=choice.source,
                                  expected_classes=self.config.classes)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None,
               inference_id: str | None = None) -> tuple[bytes, str]:
        """The model's answer (bytes, content type); InvocationError where its code refuses
        or fails. A capture that cannot be written never fails the answer."""
        serving = self.current()
        output, output_type = serving.model.invoke(body, content_type, accept)
        if serving.capture_config.get("EnableCapture"):
            # One record per invocation, a batch request included, as SageMaker captures:
            # monitoring reads a batch record as one record per image.
            self._capture(serving, body, content_type or "application/octet-stream", output,
                          output_type, inference_id)
        return output, output_type

    def _capture(self, serving: _Serving, body: bytes, content_type: str, output: bytes,
                 output_type: str, inference_id: str | None) -> None:
        try:
            self.capture_writer.capture(serving.capture_config, body, content_type,
                                        output, output_type, inference_id=inference_id,
                                        model_version=serving.model.version,
                                        package_arn=serving.model.package_arn,
                                        stage=serving.state.get("Stage"))
        except (OSError, SconesError) as exc:
            # As SageMaker: a capture record that cannot be written is dropped (and
            # counted), the prediction still answered.
            self.capture_drops.dropped(exc)

    def close(self) -> None:
        with self._lock:
            if self._serving is not None:
                self._serving.model.close()
                self._serving = None
        self.capture_drops.flush()


# ------------------------------------------------------------------ the WSGI application


def _json(status: str, message: str, headers: Iterable[tuple[str, str]] = (),
          **members: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    body = json.dumps({"message": message, **members}).encode()
    return status, [("Content-Type", "application/json"), *headers], body


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            406: "Not Acceptable", 411: "Length Required", 413: "Payload Too Large",
            415: "Unsupported Media Type", 424: "Failed Dependency",
            500: "Internal Server Error", 505: "HTTP Version Not Supported"}


def _status(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Error')}"


class EndpointApplication:
    """The endpoint's own logic as a WSGI application: routes, the runtime's error shapes,
    and the service's answers."""

    def __init__(self, service: EndpointService):
        self.service = service

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        status, headers, body = self.answer(environ)
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def answer(self, environ: dict) -> tuple[str, list[tuple[str, str]], bytes]:
        version = environ.get("scones.http_version", "1.1")
        if version not in ("1.0", "1.1"):
            return _json(_status(505), f"HTTP/{version or '0.9'} is not served: speak HTTP/1.1")
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        runtime = _RUNTIME_ROUTE.match(path)
        allowed = ALLOWED_METHODS.get(path) or ("POST" if runtime else None)
        if allowed is None:
            return _json(_status(404), f"not found: no route {path}")
        if method != allowed:
            return _json(_status(405), f"method not allowed: {path} answers {allowed} only, "
                                       f"not {method}", [("Allow", allowed)])
        if method == "GET":
            return self._ping()
        if environ.get("scones.chunked"):
            return _json(_status(411), "chunked request bodies are not accepted: send "
                                       "Content-Length (SageMaker's runtime does)")
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if runtime and runtime.group("name") != self.service.endpoint_name:
            return _json(_status(400), f"Endpoint {runtime.group('name')} of account "
                                       f"{LOCAL_ACCOUNT_ID} not found.",
                         [("x-amzn-ErrorType", "ValidationError")])
        try:
            output, output_type = self.service.invoke(
                body, environ.get("CONTENT_TYPE") or "application/octet-stream",
                environ.get("HTTP_ACCEPT"),
                inference_id=environ.get("HTTP_X_AMZN_SAGEMAKER_INFERENCE_ID"))
        except InvocationError as exc:
            if runtime:  # the runtime wraps any container error as AWS does: 424 ModelError
                return _json(
                    _status(424),
                    f"Received {'client' if exc.status < 500 else 'server'} error "
                    f"({exc.status}) from primary with message \"{exc.message}\".",
                    [("x-amzn-ErrorType", "ModelError")],
                    OriginalStatusCode=exc.status, OriginalMessage=exc.message)
            return _json(_status(exc.status), exc.message)
        except Exception as exc:  # the server itself failed (e.g. a broken state file)
            LOG.exception("endpoint %s: invocation failed", self.service.endpoint_name)
            return _json(_status(500), str(exc),
                         [("x-amzn-ErrorType", "InternalFailure")] if runtime else [])
        return "200 OK", [("Content-Type", output_type),
                          ("x-Amzn-Invoked-Production-Variant", VARIANT_NAME)], output

    def _ping(self) -> tuple[str, list[tuple[str, str]], bytes]:
        try:
            self.service.current()
        except Exception as exc:  # the container reports unhealthy; the reason goes to the log
            LOG.error("ping: cannot load the model: %s", exc)
            return _json(_status(500), str(exc))
        dropped = (DROPPED_CAPTURE_HEADER, str(self.service.capture_drops.count))
        return "200 OK", [("Content-Type", "text/plain"), dropped], b"\n"


# ------------------------------------------------------- waitress, answering in JSON


class _Task(WSGITask):
    def get_environment(self) -> dict:
        environ = super().get_environment()
        # waitress decodes a chunked body and drops the header; the endpoint refuses it.
        environ["scones.chunked"] = bool(self.request.chunked)
        # ... and answers any version as HTTP/1.0; the endpoint refuses what is not 1.x.
        environ["scones.http_version"] = self.request.version
        return environ


class _JsonErrorTask(ErrorTask):
    """waitress's refusals of a malformed or oversized request (400, 413, 431, 501), in JSON."""

    def execute(self) -> None:
        error = self.request.error
        if error.code == 413:
            message = (f"the request body is {self.request.content_length} bytes; the limit "
                       f"is {MAX_BODY_BYTES} bytes (6 MB, as SageMaker's)")
        else:
            message = f"{error.reason}: {error.body}"
        body = json.dumps({"message": message}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        self.channel.drain_before_close = True


class _Channel(HTTPChannel):
    """waitress's connection, answering refusals in JSON, and reading (a bounded amount of)
    what a refused client still sends before closing: closing with unread bytes makes the
    kernel send a reset, which can reach the client before the answer does."""

    task_class = _Task
    error_task_class = _JsonErrorTask
    drain_before_close = False
    _drain_left = 0

    def readable(self) -> bool:
        return True if self._drain_left else super().readable()

    def writable(self) -> bool:
        return self.will_close if self._drain_left else super().writable()

    def handle_read(self) -> None:
        if not self._drain_left:
            return super().handle_read()
        try:
            data = self.socket.recv(65536)
        except OSError:
            data = b""
        if not data or len(data) >= self._drain_left:
            self._drain_left = 0
            super().handle_close()
            return
        self._drain_left -= len(data)
        self.last_activity = time.time()

    def handle_close(self) -> None:
        if self.drain_before_close and not self._drain_left and self.connected \
                and not self.total_outbufs_len:
            self.drain_before_close = False
            try:
                self.socket.shutdown(socket.SHUT_WR)  # the answer is out: say so
            except OSError:
                return super().handle_close()
            self.will_close = False
            self._drain_left = MAX_DISCARD_BYTES
            return
        self._drain_left = 0
        super().handle_close()


class LocalEndpoint:
    """A running local endpoint; a context manager. .url, .port, .stop()."""

    def __init__(self, service: EndpointService, host: str, port: int,
                 workers: int = WORKER_THREADS, channel_timeout_s: int = CHANNEL_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS):
        self.service = service
        self._server = create_server(
            EndpointApplication(service), host=host, port=port, threads=workers,
            backlog=LISTEN_BACKLOG, channel_timeout=channel_timeout_s,
            # the maintenance pass that closes silent connections runs this often
            cleanup_interval=max(1, min(channel_timeout_s, 30) // 2),
            # the loop's own descriptors (listener, trigger) count towards the limit
            connection_limit=max_connections + 2,
            max_request_header_size=MAX_HEAD_BYTES,
            max_request_body_size=MAX_BODY_BYTES + 1,  # waitress refuses >= this
            clear_untrusted_proxy_headers=True, ident="scones-endpoint",
            expose_tracebacks=False)
        self._server.channel_class = _Channel
        self.host, self.port = self._server.effective_host, self._server.effective_port
        self._thread = threading.Thread(target=self._server.run,
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

    @property
    def open_connections(self) -> int:
        return len(self._server.active_channels)

    def stop(self) -> None:
        # The workers first (a finishing one wakes the loop through its trigger), then the
        # loop: closing every descriptor of it from its own thread ends it.
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        if self._thread.is_alive():
            try:
                self._server.trigger.pull_trigger(lambda: _close_all(self._server))
            except OSError:
                # The loop's wake-up pipe is gone (seen once as EBADF in a full test run):
                # close its descriptors from here; the loop then finds nothing to wait on.
                _close_all(self._server)
            self._thread.join(timeout=10)
        self.service.close()

    def __enter__(self) -> "LocalEndpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _close_all(server) -> None:
    for dispatcher in list(server._map.values()):
        try:
            dispatcher.close()
        except OSError:
            pass


def start_endpoint(config: Config, host: str = "127.0.0.1", port: int = 0,
                   model_version: int | None = None, model_tar: Path | None = None,
                   endpoint_name: str | None = None, **server_options: Any) -> LocalEndpoint:
    """Load the model (see module doc for which) and serve it on host:port (0: any free).
    server_options: LocalEndpoint's limits (workers, channel_timeout_s, max_connections)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise SconesError(f"port {port!r} is not a TCP port: choose one in 1-65535 "
                          "(0: any free port)")
    service = EndpointService(config, endpoint_name, model_version=model_version,
                              model_tar=model_tar)
    try:
        return LocalEndpoint(service, host, port, **server_options)
    except OSError as exc:
        service.close()
        raise SconesError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
