"""The local SageMaker endpoint's HTTP service on 127.0.0.1: the container contract (GET
/ping, POST /invocations) and the SageMaker Runtime route (POST
/endpoints/{name}/invocations), so a plain boto3 `sagemaker-runtime` client reaches it
through AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=http://127.0.0.1:PORT.

Which model it serves: the endpoint state file (scones.local.deployment_state; re-read whenever it
changes), else the registry's newest Approved version, else - before any approval - the
newest registered one.

Bounded for untrusted clients (BoundedHTTPServer): listen backlog 128, 16 worker threads,
request heads read without a thread (idle and slowloris connections time out), bodies over
SageMaker's 6 MB refused with 413 unread, and every refusal (400/404/405/411/413/431/501/505)
answered in JSON.
"""
from __future__ import annotations

import io
import json
import logging
import queue
import re
import selectors
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from lambdas.deploy_approved_model import VARIANT_NAME
from scones.config import Config
from scones.local.deployment_state import EndpointStateFile
from scones.errors import SconesError
from scones.local.resources import LOCAL_ACCOUNT_ID, LocalResources
from scones.local.endpoint.batch import BatchRequestError, invoke_batch, is_batch
from scones.local.endpoint.capture import DataCaptureWriter, default_capture_config
from scones.local.endpoint.model_archive import (DEFAULT_ACCEPT, ModelChoice, ServedModel,
                                             choose_from_registry, load_model_archive)

LOG = logging.getLogger("scones.endpoint")

# SageMaker's limit on an invocation's payload; a bigger body is refused (413) unread.
MAX_BODY_BYTES = 6 * 1024 * 1024
# Connections the kernel queues before accept (the old default, 5, reset clients at 32+).
LISTEN_BACKLOG = 128
# Threads that run requests. Waiting for a request costs no thread: connections wait in a
# selector until their whole request head has arrived.
WORKER_THREADS = 16
# Open connections at most (idle, reading a head, or in a worker); more are answered 503.
MAX_CONNECTIONS = 512
# From a request's first byte (or a new connection's accept) to its complete head.
HEAD_TIMEOUT_S = 10.0
# A kept-alive connection with no next request is closed after this long.
IDLE_TIMEOUT_S = 60.0
# Each read of a body and each write of a response, once a worker has the request.
IO_TIMEOUT_S = 30.0
MAX_HEAD_BYTES = 64 * 1024
# A refused body up to this size is read and thrown away (64 KB at a time) after the 413,
# so a client that sends the whole body before reading (urllib, botocore) sees the 413
# rather than a reset connection; a bigger one is cut off.
MAX_DISCARD_BYTES = 64 * 1024 * 1024
ALLOWED_METHODS = {"/ping": "GET", "/invocations": "POST"}  # and the runtime route: POST



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
        resources = LocalResources(config)
        self.state_file = EndpointStateFile(resources.workspace, self.endpoint_name)
        self.state_path = self.state_file.path
        self.capture_writer = DataCaptureWriter(resources.object_store(), self.endpoint_name)
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

    def invoke(self, body: bytes, content_type: str, accept: str,
               inference_id: str | None = None) -> tuple[bytes, str]:
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
                                    output, output_type, inference_id=inference_id,
                                    model_version=serving.model.version,
                                    package_arn=serving.model.package_arn,
                                    stage=serving.state.get("Stage"))
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


class RequestError(Exception):
    """A request refused before it reaches the model (bad length, too big, wrong method)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class _ConnectionReader(io.RawIOBase):
    """A connection's bytes: first those the server loop already read (the request head,
    perhaps more), then the socket's. Unbuffered, so nothing beyond the current request is
    ever consumed: bytes a client sent early stay `pending` for its next request."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.pending:
            count = min(len(buffer), len(self.pending))
            buffer[:count] = self.pending[:count]
            self.pending = self.pending[count:]
            return count
        return self.sock.recv_into(buffer)

    def readline(self, size: int = -1) -> bytes:  # the head is in memory: no byte-wise recv
        if self.pending:
            end = self.pending.find(b"\n") + 1 or len(self.pending)
            if size >= 0:
                end = min(end, size)
            line, self.pending = self.pending[:end], self.pending[end:]
            if line.endswith(b"\n") or len(line) == size:
                return line
            return line + super().readline(-1 if size < 0 else size - len(line))
        return super().readline(size)

    def read_exactly(self, count: int) -> bytes:
        """`count` bytes, or fewer only if the client closed the connection."""
        chunks, remaining = [], count
        while remaining:
            chunk = self.read(min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)


class _SocketWriter(io.RawIOBase):
    def __init__(self, sock: socket.socket):
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sock.sendall(data)
        return len(data)


class _Handler(BaseHTTPRequestHandler):
    """One connection's HTTP/1.1 requests, one at a time, each handed over by the server
    loop with its head already read (serve_one). Every answer, errors included, is JSON."""

    protocol_version = "HTTP/1.1"  # keep-alive: botocore pools its connections
    # A request line without a version is answered with a status line all the same (the
    # HTTP/0.9 default would send a bare body no client can read as an error).
    default_request_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a kept-alive connection then
    # waits for the client's delayed ACK (~40 ms) on every response.
    disable_nagle_algorithm = True
    service: EndpointService  # set on the subclass made per server

    def __init__(self, sock: socket.socket, client_address, server) -> None:
        # Not BaseRequestHandler's __init__ (which serves the whole connection at once).
        self.request = self.connection = sock
        self.client_address = client_address
        self.server = server
        if self.disable_nagle_algorithm:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.reader = _ConnectionReader(sock)
        self.rfile = self.reader
        self.wfile = _SocketWriter(sock)

    def serve_one(self, head: bytes) -> tuple[bool, bytes]:
        """Answer the request whose head (and maybe more) is `head`; whether to keep the
        connection open, and the bytes read beyond this request."""
        self.reader.pending = head
        self.close_connection = True
        self.discard_bytes = 0
        self.handle_one_request()
        leftover, self.reader.pending = self.reader.pending, b""
        return not self.close_connection, leftover

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s - %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None,
                   headers: dict[str, str] | None = None) -> None:
        """BaseHTTPRequestHandler's malformed-request answers (400, 414, 431, 501, 505) in
        JSON, and the connection closed: what follows a bad request cannot be trusted."""
        short, long = self.responses.get(code, ("Error", ""))
        text = message or short
        if explain and explain != long:
            text = f"{text}: {explain}"
        self.log_error("code %d, message %s", code, text)
        body = json.dumps({"message": text}).encode()
        self.send_response(code, short)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

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

    def _route(self) -> tuple[str | None, re.Match | None]:
        """(the method the path allows, the runtime route's match); (None, None): no route."""
        path = self.path.split("?")[0]
        if path in ALLOWED_METHODS:
            return ALLOWED_METHODS[path], None
        runtime = _RUNTIME_ROUTE.match(self.path)
        return ("POST", runtime) if runtime else (None, None)

    def _refuse_method(self) -> None:
        allowed, _ = self._route()
        if allowed is None:
            self.send_error(404, "not found", f"no route {self.path.split('?')[0]}")
            return
        self.send_error(405, "method not allowed",
                        f"{self.path.split('?')[0]} answers {allowed} only, not {self.command}",
                        headers={"Allow": allowed})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = \
        _refuse_method

    def do_GET(self) -> None:
        allowed, _ = self._route()
        if allowed != "GET":
            self._refuse_method()
            return
        try:
            self.service.current()
        except Exception as exc:  # the container reports unhealthy; the reason goes to the log
            LOG.error("ping: cannot load the model: %s", exc)
            self._send(500, json.dumps({"message": str(exc)}).encode(), "application/json")
            return
        self._send(200, b"\n", "text/plain")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise RequestError(411, "chunked request bodies are not accepted: send "
                                    "Content-Length (SageMaker's runtime does)")
        lengths = self.headers.get_all("Content-Length") or []
        if len(set(lengths)) > 1:
            raise RequestError(400, f"conflicting Content-Length headers: {', '.join(lengths)}")
        text = lengths[0].strip() if lengths else "0"
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise RequestError(400, f"Content-Length {text[:40]!r} is not a byte count")
        length = int(text)
        if length > MAX_BODY_BYTES:
            self.discard_bytes = min(length, MAX_DISCARD_BYTES)
            raise RequestError(413, f"the request body is {length} bytes; the limit is "
                                    f"{MAX_BODY_BYTES} bytes (6 MB, as SageMaker's)")
        body = self.reader.read_exactly(length)
        if len(body) < length:
            raise RequestError(400, f"the body ended after {len(body)} of the {length} bytes "
                                    "Content-Length announced")
        return body

    def do_POST(self) -> None:
        allowed, runtime = self._route()
        if allowed != "POST":
            self._refuse_method()
            return
        try:
            body = self._read_body()
        except RequestError as exc:
            # The unread body (if any) makes the connection unusable: send_error closes it.
            self.send_error(exc.status, exc.message)
            return
        content_type = self.headers.get("Content-Type") or "application/octet-stream"
        accept = self.headers.get("Accept") or DEFAULT_ACCEPT
        if accept.strip() == "*/*":
            accept = DEFAULT_ACCEPT
        if runtime:
            name = runtime.group("name")
            if name != self.service.endpoint_name:
                self._send_aws_error(400, "ValidationError",
                                     f"Endpoint {name} of account {LOCAL_ACCOUNT_ID} not found.")
                return
        try:
            output, output_type = self.service.invoke(
                body, content_type, accept,
                inference_id=self.headers.get("X-Amzn-SageMaker-Inference-Id"))
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


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    address: Any
    deadline: float
    head: bytearray = field(default_factory=bytearray)
    handler: _Handler | None = None


def _head_complete(data: bytearray) -> bool:
    return b"\n\r\n" in data or b"\n\n" in data


class BoundedHTTPServer:
    """An HTTP server with bounded resources, for untrusted clients on a port:

    - one loop thread accepts connections and reads request heads without blocking, so
      idle or slow (slowloris) connections cost a file descriptor, never a thread, and are
      closed when their head does not arrive within HEAD_TIMEOUT_S (IDLE_TIMEOUT_S between
      kept-alive requests);
    - a complete head goes to a fixed pool of WORKER_THREADS, which read the body (each
      read bounded by IO_TIMEOUT_S) and answer; the connection then goes back to the loop;
    - at most MAX_CONNECTIONS are open; beyond that a new one is answered 503 and closed.

    The same serve_forever / shutdown / server_close / server_address as socketserver's."""

    def __init__(self, address: tuple[str, int], handler_class: type[_Handler],
                 workers: int = WORKER_THREADS, head_timeout_s: float = HEAD_TIMEOUT_S,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, io_timeout_s: float = IO_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS):
        self.handler_class = handler_class
        self.head_timeout_s = head_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.io_timeout_s = io_timeout_s
        self.max_connections = max_connections
        self.socket = socket.create_server(address, backlog=LISTEN_BACKLOG)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._waiting: dict[_Connection, None] = {}  # in the selector (ordered: oldest first)
        self._busy: set[_Connection] = set()          # in a worker
        self._busy_lock = threading.Lock()
        self._returned: queue.SimpleQueue = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="endpoint-worker")
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()

    # -- the loop ------------------------------------------------------------------------
    def serve_forever(self) -> None:
        self._stopped.clear()
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(timeout=0.5):
                    if key.fileobj is self.socket:
                        self._accept()
                    elif key.fileobj is self._wake_read:
                        self._drain_wakeups()
                    else:
                        self._read_head(key.data)
                self._take_back()
                self._expire()
        finally:
            self._stopped.set()

    def _wake(self) -> None:
        try:
            self._wake_write.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already woken (buffer full) or closing

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_read.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: keep serving the others
                LOG.warning("endpoint: accept failed: %s", exc)
                return
            with self._busy_lock:
                open_now = len(self._waiting) + len(self._busy)
            if open_now >= self.max_connections:
                _refuse_quickly(sock, 503, "too many open connections; retry shortly")
                continue
            sock.setblocking(False)
            self._watch(_Connection(sock, address, time.monotonic() + self.head_timeout_s))

    def _watch(self, connection: _Connection) -> None:
        self._waiting[connection] = None
        self._selector.register(connection.sock, selectors.EVENT_READ, connection)

    def _unwatch(self, connection: _Connection) -> None:
        self._waiting.pop(connection, None)
        try:
            self._selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass

    def _close(self, connection: _Connection) -> None:
        self._unwatch(connection)
        try:
            connection.sock.close()
        except OSError:
            pass

    def _read_head(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        if not data:
            self._close(connection)
            return
        if not connection.head:  # a request begins: its head has HEAD_TIMEOUT_S to arrive
            connection.deadline = time.monotonic() + self.head_timeout_s
        connection.head += data
        if _head_complete(connection.head):
            self._dispatch(connection)
        elif len(connection.head) > MAX_HEAD_BYTES:
            self._unwatch(connection)
            _refuse_quickly(connection.sock, 431, f"the request head exceeds "
                                                  f"{MAX_HEAD_BYTES} bytes")

    def _dispatch(self, connection: _Connection) -> None:
        self._unwatch(connection)
        with self._busy_lock:
            self._busy.add(connection)
        try:
            self._pool.submit(self._work, connection)
        except RuntimeError:  # the pool is shut down: the server is stopping
            with self._busy_lock:
                self._busy.discard(connection)
            connection.sock.close()

    def _work(self, connection: _Connection) -> None:
        keep, leftover = False, b""
        try:
            connection.sock.setblocking(True)
            connection.sock.settimeout(self.io_timeout_s)
            if connection.handler is None:
                connection.handler = self.handler_class(connection.sock, connection.address,
                                                        self)
            head = bytes(connection.head)
            connection.head.clear()
            keep, leftover = connection.handler.serve_one(head)
        except OSError:
            keep = False  # the client went away or stalled: nothing to answer
        except Exception:  # a bug of ours; the connection is dropped, the server stays up
            LOG.exception("endpoint: request from %s failed", connection.address)
            keep = False
        finally:
            if not keep:
                discard = getattr(connection.handler, "discard_bytes", 0)
                if discard:
                    _linger(connection.sock, self.io_timeout_s, discard)
                else:
                    _linger(connection.sock)
            self._returned.put((connection, keep, leftover))
            self._wake()

    def _take_back(self) -> None:
        while True:
            try:
                connection, keep, leftover = self._returned.get_nowait()
            except queue.Empty:
                return
            with self._busy_lock:
                self._busy.discard(connection)
            if not keep or self._stop.is_set():
                connection.sock.close()
                continue
            connection.sock.setblocking(False)
            connection.head += leftover
            connection.deadline = time.monotonic() + (
                self.head_timeout_s if connection.head else self.idle_timeout_s)
            if _head_complete(connection.head):
                self._dispatch(connection)  # a pipelined request already arrived
            else:
                self._watch(connection)

    def _expire(self) -> None:
        now = time.monotonic()
        for connection in [c for c in self._waiting if c.deadline <= now]:
            self._close(connection)  # slow or idle: it holds nothing but this descriptor

    # -- socketserver's interface ------------------------------------------------------
    def shutdown(self) -> None:
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        self._stop.set()
        self._stopped.wait()
        for connection in list(self._waiting):
            self._close(connection)
        with self._busy_lock:
            busy = list(self._busy)
        for connection in busy:  # unblock workers waiting on a client
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._take_back()
        self._selector.close()
        for sock in (self.socket, self._wake_read, self._wake_write):
            sock.close()

    @property
    def open_connections(self) -> int:
        with self._busy_lock:
            return len(self._waiting) + len(self._busy)


def _linger(sock: socket.socket, seconds: float = 1.0, limit: int = 1 << 20) -> None:
    """Before closing: stop sending, and read (briefly, a bounded amount) what the client
    is still sending, e.g. the rest of a refused 7 MB body. Closing with unread bytes
    makes the kernel send a reset, which can reach the client before our answer does."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while limit > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                return
            limit -= len(chunk)
    except OSError:
        pass


def _refuse_quickly(sock: socket.socket, status: int, message: str) -> None:
    """Best effort, never blocking the loop: a JSON error, then close."""
    body = json.dumps({"message": message}).encode()
    reason = {431: "Request Header Fields Too Large", 503: "Service Unavailable"}[status]
    try:
        sock.setblocking(False)
        sock.send(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    except OSError:
        pass
    finally:
        sock.close()


class LocalEndpoint:
    """A running local endpoint; a context manager. .url, .port, .stop()."""

    def __init__(self, service: EndpointService, host: str, port: int, **server_options: Any):
        handler = type("EndpointHandler", (_Handler,), {"service": service})
        self.service = service
        self._server = BoundedHTTPServer((host, port), handler, **server_options)
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
                   endpoint_name: str | None = None, **server_options: Any) -> LocalEndpoint:
    """Load the model (see module doc for which) and serve it on host:port (0: any free).
    server_options: BoundedHTTPServer's limits (workers, head_timeout_s, ...)."""
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

