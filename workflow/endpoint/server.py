"""The local SageMaker endpoint's HTTP service on 127.0.0.1: the container contract (GET
/ping, POST /invocations) and the SageMaker Runtime route (POST
/endpoints/{name}/invocations), so a plain boto3 `sagemaker-runtime` client reaches it
through AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=http://127.0.0.1:PORT.

Which model it serves: the endpoint state file (scones.endpoint_state; re-read whenever it
changes), else the registry's newest Approved version, else - before any approval - the
newest registered one.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lambdas.deploy_approved_model import VARIANT_NAME
from scones.backend import LOCAL_ACCOUNT_ID, backend_for
from scones.config import Config
from scones.endpoint_state import EndpointStateFile
from scones.errors import SconesError
from workflow.endpoint.batch import BatchRequestError, invoke_batch, is_batch
from workflow.endpoint.capture import DataCaptureWriter, default_capture_config
from workflow.endpoint.model_archive import (DEFAULT_ACCEPT, ModelChoice, ServedModel,
                                             choose_from_registry, load_model_archive)

LOG = logging.getLogger("scones.endpoint")



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
        backend = backend_for(config)
        self.state_file = EndpointStateFile(backend.workspace, self.endpoint_name)
        self.state_path = self.state_file.path
        self.capture_writer = DataCaptureWriter(backend.object_store(), self.endpoint_name)
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

    @staticmethod
    def _load(choice: ModelChoice) -> ServedModel:
        return load_model_archive(choice.tar_path, version=choice.version,
                                  package_arn=choice.package_arn, source=choice.source)

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        serving = self.current()
        if is_batch(content_type):  # the bulk workflow's many-images request (batch.py)
            return self._invoke_batch(serving, body)
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

    def _invoke_batch(self, serving: _Serving, body: bytes) -> tuple[bytes, str]:
        def capture(image: bytes, content_type: str, output: bytes, output_type: str) -> None:
            self.capture_writer.capture(serving.capture_config, image, content_type, output,
                                        output_type)
        try:
            return invoke_batch(serving.model, body, capture)
        except BatchRequestError as exc:
            raise InvocationError(exc.status_code, str(exc)) from None
        except Exception as exc:
            LOG.exception("endpoint %s: batch invocation failed", self.endpoint_name)
            raise InvocationError(500, f"{type(exc).__name__}: {exc}") from None

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
                   {"x-Amzn-Invoked-Production-Variant": VARIANT_NAME})


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

