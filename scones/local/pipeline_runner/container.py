"""The container a SageMaker job would run in, emulated on this machine.

    /opt/ml/...           container paths map into the step's folder
                          (<workspace>/executions/<id>/<step>/...)
    SM_* environment      what the SageMaker training toolkit gives a script-mode entry point
    python / python3      the interpreter running the runner (a shim folder first on PATH)
    the job's process     its own process group (session); it never outlives the runner:
                          every exit path kills the group, and on Linux the kernel kills the
                          job when the runner dies, even by SIGKILL (PR_SET_PDEATHSIG)
"""
from __future__ import annotations

import json
import os
import re
import signal
import shutil
import subprocess
import sys
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from scones.local.pipeline_runner.expressions import to_text

LOG_TAIL_LINES = 15
# How long a job has to end after SIGTERM before its group is killed.
STOP_GRACE_S = 5.0
OPT_ML = re.compile(r"(?<![\w/.])/opt/ml(?=/|$)")
PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
# Written into a step's folder before its inputs are copied, so that whoever finds the step
# dead (tests, `pipeline executions` after a SIGKILL) can remove the copies.
INPUT_COPIES_FILE = ".input-copies.json"


def now() -> str:
    """The time as the execution records and the jobs' metrics write it (UTC, ms)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def remove_input_copies(folder: Path) -> None:
    """Delete the inputs a step copied into its folder (a job's volume is gone after the job
    on SageMaker too; the log and the outputs stay)."""
    manifest = folder / INPUT_COPIES_FILE
    try:
        copies = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return
    for relative in copies:
        path = (folder / relative).resolve()
        if folder.resolve() not in path.parents:
            continue  # a manifest naming something outside its folder is not followed
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    manifest.unlink(missing_ok=True)


class StepFailed(Exception):
    """A step ended Failed; the message is its failure reason."""


def map_text(text: str, step_dir: Path) -> str:
    """Every /opt/ml path inside an argument, moved into the step's folder."""
    return OPT_ML.sub(str(step_dir).replace("\\", "/"), text)


def map_path(container_path: str, step_dir: Path) -> Path:
    path = to_text(container_path)
    if not OPT_ML.match(path):
        raise StepFailed(f"container path {path!r} is not under /opt/ml/, so it has no "
                         "place in the step's folder")
    return Path(map_text(path, step_dir))


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def job_name(execution_id: str, step: str) -> str:
    """SageMaker's pattern for the jobs a pipeline starts: pipelines-<execution>-<step>."""
    return f"pipelines-{execution_id}-{re.sub(r'[^A-Za-z0-9-]', '-', step)}"[:63].rstrip("-")


def decode_hyperparameter(text: str) -> Any:
    """Hyperparameters travel JSON-encoded ("\\"train.py\\"", "30"); plain text stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def final_metrics(log: str, definitions: list[dict]) -> list[dict]:
    """The last value each MetricDefinitions regex captured, like DescribeTrainingJob's
    FinalMetricDataList."""
    metrics = []
    for definition in definitions:
        values = re.findall(definition["Regex"], log)
        if not values:
            continue
        value = values[-1][0] if isinstance(values[-1], tuple) else values[-1]
        try:
            number = float(value)
        except ValueError:
            continue
        metrics.append({"MetricName": definition["Name"], "Value": number,
                        "Timestamp": now()})
    return metrics


def _gpu_count() -> int:
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def training_env(job_name, step_dir, code_dir, model_dir, output_data, channels,
                  hyperparameters, user_hps, user_args, program, submit) -> dict[str, str]:
    """The environment the SageMaker training toolkit gives a script-mode entry point."""
    host = "algo-1"
    num_cpus, num_gpus = os.cpu_count() or 1, _gpu_count()
    training_env = {
        "job_name": job_name, "hosts": [host], "current_host": host,
        "num_cpus": num_cpus, "num_gpus": num_gpus,
        "model_dir": str(model_dir), "output_data_dir": str(output_data),
        "output_dir": str(step_dir / "output"), "input_dir": str(step_dir / "input"),
        "input_data_config": {name: {"TrainingInputMode": "File"} for name in channels},
        "channel_input_dirs": channels, "hyperparameters": user_hps,
        "module_name": Path(program).stem, "user_entry_point": program,
        "module_dir": submit, "log_level": 20, "network_interface_name": "eth0",
        "resource_config": {"current_host": host, "hosts": [host]},
    }
    env = {
        "SM_TRAINING_ENV": json.dumps(training_env), "SM_HPS": json.dumps(user_hps),
        "SM_USER_ARGS": json.dumps(user_args), "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DATA_DIR": str(output_data), "SM_OUTPUT_DIR": str(step_dir / "output"),
        "SM_INPUT_DIR": str(step_dir / "input"),
        "SM_INPUT_CONFIG_DIR": str(step_dir / "input" / "config"),
        "SM_CHANNELS": json.dumps(sorted(channels)), "SM_HOSTS": json.dumps([host]),
        "SM_CURRENT_HOST": host, "SM_NUM_CPUS": str(num_cpus), "SM_NUM_GPUS": str(num_gpus),
        "SM_MODULE_NAME": Path(program).stem, "SM_USER_ENTRY_POINT": program,
        "SM_MODULE_DIR": submit, "SM_LOG_LEVEL": "20", "SM_NETWORK_INTERFACE_NAME": "eth0",
        "SM_RESOURCE_CONFIG": json.dumps(training_env["resource_config"]),
        "SM_INPUT_DATA_CONFIG": json.dumps(training_env["input_data_config"]),
        "SM_FRAMEWORK_PARAMS": "{}", "TRAINING_JOB_NAME": job_name,
    }
    for name, folder in channels.items():
        env[f"SM_CHANNEL_{name.upper()}"] = folder
    for key, value in user_hps.items():
        env[f"SM_HP_{re.sub(r'[^A-Za-z0-9]', '_', key).upper()}"] = to_text(value)
    return env


# --- the job's process ---------------------------------------------------------------------

def _parent_death_signal() -> Callable[[], None] | None:
    """Linux only: a preexec function asking the kernel to SIGKILL the child when the
    runner dies (PR_SET_PDEATHSIG), so even `kill -9` of the runner leaves no orphan job.
    It only makes one libc call: safe between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # the runner died before prctl took effect
            os._exit(1)

    return die_with_parent


def _kill_group(process: subprocess.Popen, grace: float) -> None:
    """End the job's whole process group: SIGTERM, then SIGKILL after `grace` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM if grace else signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=grace or None)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers, and the job if it ignored TERM
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def run_job(step: str, command: list[str], env: dict[str, str], cwd: Path, step_dir: Path,
            log_path: Path, on_line: Callable[[str], None],
            on_start: Callable[[int], None] | None = None) -> None:
    """Run a step's process, streaming its lines to on_line and keeping them in log.txt.
    A non-zero exit fails the step with the log's tail as the reason. However this
    function is left (an exception, Ctrl-C, SIGTERM), the job's group is gone after it."""
    shim = step_dir / ".bin"  # scripts that call `python` get this interpreter
    shim.mkdir(parents=True, exist_ok=True)
    for alias in ("python", "python3"):
        link = shim / alias
        if not link.exists():
            link.symlink_to(sys.executable)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1",
                "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"}
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        try:
            process = subprocess.Popen(command, cwd=cwd, env=full_env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, errors="replace", bufsize=1,
                                       start_new_session=True,
                                       preexec_fn=_parent_death_signal())
        except OSError as exc:
            raise StepFailed(f"step {step}: cannot start {command[0]}: {exc}") from None
        finished = False
        log_error = None
        try:
            if on_start:
                on_start(process.pid)
            for line in process.stdout:
                tail.append(line.rstrip("\n"))
                if log_error is None:
                    try:
                        log.write(line)
                        log.flush()
                    except OSError as exc:
                        # A full disk: the log stops, the job's own words do not (they are
                        # the reason it failed, likely the same full disk).
                        log_error = exc
                on_line(line.rstrip())
            # Wait for the job without reaping it, so its group id cannot be reused before
            # the group's leftovers (processes the job started) are killed below.
            if hasattr(os, "waitid"):
                os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            finished = True
        finally:
            _kill_group(process, grace=0 if finished else STOP_GRACE_S)
            process.stdout.close()
        code = process.returncode
        if log_error is not None:
            try:
                log.close()  # its unwritten buffer would raise again on the way out
            except OSError:
                pass
    if code != 0:
        lines = "\n".join(tail)
        error = last_error_line(tail)
        raise StepFailed(f"step {step} exited with code {code}"
                         + (f": {error}" if error else "")
                         + f"; last lines of {log_path}:\n{lines}")


# "OSError: [Errno 28] ...", "torch.OutOfMemoryError: ...", "error: ..." (argparse, our jobs)
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure)"
                         r"(?::.*)?|error:.*|fatal:.*)$")
_NOT_THE_ERROR = ("Traceback (most recent call last):", "During handling of the above",
                  "The above exception was the direct cause", "Exception ignored in")


def last_error_line(lines) -> str | None:
    """The job's last real error line: the final exception of a traceback (chained ones
    included), or an `error: ...` line; never the traceback header or a frame."""
    for line in reversed(list(lines)):
        text = line.strip()
        if not text or text.startswith(_NOT_THE_ERROR) or line[:1].isspace():
            continue
        if _ERROR_LINE.match(text):
            return text[:300]
    return None
