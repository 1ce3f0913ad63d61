"""A local endpoint that outlives the command that started it, and how commands find one.

Starting the endpoint (a Python process importing torch and loading the model) is most of
what a one-image `scones workflow run` costs. So a running endpoint is recorded in
<workspace>/run/endpoint-<name>.json ({"Url", "Pid", "Owner", ...}) and reused: by one
left running in the background (`start_background`, `python -m
scones.local.endpoint.background`), which stops itself after an idle timeout, or by
`scones endpoint serve` once it registers itself (register_running / unregister_running).
A record is trusted only if its process is alive and GET /ping answers 200; a stale one
is removed.

The endpoint serves whatever the endpoint state file says (re-read on change), so reusing
it gives the same answers as a fresh one; a run pinned to a model (--model-version, a
model tar) starts its own instead.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scones.config import Config
from scones.processes import pid_runs
from scones.errors import SconesError

RUNNING_FOLDER = "run"
DEFAULT_IDLE_TIMEOUT_S = 600.0       # a background endpoint stops after 10 idle minutes
PING_TIMEOUT_S = 1.0
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RunningEndpoint:
    url: str
    pid: int
    owner: str                 # "background" | "serve"
    endpoint_name: str


def running_file(config: Config, endpoint_name: str | None = None) -> Path:
    name = endpoint_name or config.workflow.endpoint_name
    return Path(config.local.workspace) / RUNNING_FOLDER / f"endpoint-{name}.json"


def register_running(config: Config, url: str, pid: int, owner: str,
                     endpoint_name: str | None = None, idle_timeout_s: float | None = None
                     ) -> Path:
    """Record a running endpoint for later commands (written atomically)."""
    path = running_file(config, endpoint_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    tmp.write_text(json.dumps({"Url": url, "Pid": pid, "Owner": owner,
                               "EndpointName": endpoint_name or config.workflow.endpoint_name,
                               "IdleTimeoutSeconds": idle_timeout_s,
                               "StartedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    tmp.replace(path)
    return path


def unregister_running(config: Config, pid: int, endpoint_name: str | None = None) -> None:
    """Remove the record if it is still this process's (a newer one is left alone)."""
    path = running_file(config, endpoint_name)
    try:
        if json.loads(path.read_text()).get("Pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def _pings(url: str, timeout: float = PING_TIMEOUT_S) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def find_running(config: Config, endpoint_name: str | None = None) -> RunningEndpoint | None:
    """The recorded endpoint if its process is alive and it answers /ping; else None
    (and a stale record is removed)."""
    path = running_file(config, endpoint_name)
    try:
        record = json.loads(path.read_text())
        endpoint = RunningEndpoint(str(record["Url"]), int(record["Pid"]),
                                   str(record.get("Owner", "?")),
                                   str(record.get("EndpointName", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid_runs(endpoint.pid) and _pings(endpoint.url):
        return endpoint
    unregister_running(config, endpoint.pid, endpoint_name)
    return None


def start_background(config: Config, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
                     progress: bool = True) -> RunningEndpoint:
    """Start the endpoint in a process of its own session (it survives this one), wait
    until it serves, and return it; it stops after idle_timeout_s without requests."""
    import pickle
    import select
    import subprocess

    log_path = running_file(config).with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"starting the local endpoint in the background (it stops after "
              f"{idle_timeout_s / 60:g} idle minutes; log {log_path})...", file=sys.stderr,
              flush=True)
    started = time.monotonic()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "scones.local.endpoint.background"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            cwd=str(Path(__file__).resolve().parents[3]))
    process.stdin.write(pickle.dumps({"config": config, "idle_timeout_s": idle_timeout_s}))
    process.stdin.close()
    readable, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
    line = process.stdout.readline() if readable else b""
    process.stdout.close()
    if not line:
        if process.poll() is None:
            process.kill()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        errors = [t[len("error: "):] for t in tail if t.startswith("error: ")]
        raise SconesError(errors[-1] if errors else
                          f"the background endpoint did not start within "
                          f"{START_TIMEOUT_S:.0f} s; see {log_path}")
    ready = json.loads(line)
    if progress:
        print(f"endpoint ready at {ready['url']} ({time.monotonic() - started:.1f} s)",
              file=sys.stderr, flush=True)
    return RunningEndpoint(ready["url"], process.pid, "background",
                           config.workflow.endpoint_name)


def serve_background() -> int:
    """`python -m scones.local.endpoint.background`: read {config, idle_timeout_s} pickled on
    stdin, serve, register, print one JSON ready line, and stop (unregistering) after
    idle_timeout_s without a request, or on SIGTERM."""
    import pickle
    import signal
    import threading

    from scones.local.endpoint.server import start_endpoint

    request = pickle.load(sys.stdin.buffer)
    config, idle_timeout_s = request["config"], float(request["idle_timeout_s"])
    try:
        endpoint = start_endpoint(config)
    except SconesError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    last_use = [time.monotonic()]
    service = endpoint.service
    invoke, current = service.invoke, service.current

    def invoke_and_note(*args, **kwargs):  # every invocation and /ping keeps it alive
        last_use[0] = time.monotonic()
        return invoke(*args, **kwargs)

    def current_and_note(*args, **kwargs):
        last_use[0] = time.monotonic()
        return current(*args, **kwargs)

    service.invoke, service.current = invoke_and_note, current_and_note
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pid = os.getpid()
    register_running(config, endpoint.url, pid, "background", idle_timeout_s=idle_timeout_s)
    try:
        sys.stdout.write(json.dumps({"url": endpoint.url, "pid": pid}) + "\n")
        sys.stdout.flush()
        sys.stdout.close()
        while not stop.wait(min(5.0, idle_timeout_s / 4)):
            if time.monotonic() - last_use[0] > idle_timeout_s:
                print(f"idle for {idle_timeout_s:g} s: stopping", file=sys.stderr, flush=True)
                break
    finally:
        unregister_running(config, pid)
        endpoint.stop()
    return 0


if __name__ == "__main__":
    sys.exit(serve_background())
