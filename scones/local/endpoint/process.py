"""The local endpoint in a child process of its own (`python -m scones.local.endpoint`)."""
from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scones.config import Config
from scones.errors import SconesError
from scones.local.endpoint.server import start_endpoint


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
    """The local endpoint in a child process (`python -m scones.local.endpoint`), so the model
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
            [sys.executable, "-m", "scones.local.endpoint"], stdin=subprocess.PIPE,
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
    """`python -m scones.local.endpoint`, started by EndpointProcess: read the request pickled
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

    sys.exit(serve_child())
