"""Long work the Studio starts, and how it shows progress.

Pipeline runs and retries are `scones pipeline run|retry` processes of their own (the CLI's
exact code path): a run outlives the page that started it, training does not share the web
server's interpreter, and Stop is the runner's own SIGTERM handling (recorded Stopped, as
after Ctrl-C). Their progress is read back from the executor's records, which the pages poll.

Inference runs ("Try it") are threads calling workflow.run, one at a time (the local Step
Functions engine is process-wide); their results are polled by job id.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class CliRun:
    """A `scones ...` process started from the Studio."""

    number: int
    what: str
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.time)

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def last_line(self) -> str:
        """The last line it printed on stderr (its `error: ...` line when it failed)."""
        try:
            with self.log.open("rb") as handle:
                handle.seek(max(0, self.log.stat().st_size - 4096))
                lines = handle.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""


class CliRuns:
    """Starts `python -m app.cli.main ARGS... <the Studio's own --env/--config/--set>`."""

    def __init__(self, config_args: list[str], log_dir: Path):
        self.config_args = list(config_args)
        self.log_dir = log_dir
        self.runs: list[CliRun] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, what: str, args: list[str]) -> CliRun:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        number = next(self._numbers)
        log = self.log_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{number}.log"
        with log.open("wb") as out:
            # a session of its own: the run goes on if the Studio is stopped (Ctrl-C there
            # must not stop training someone started); Stop signals it by its recorded pid
            process = subprocess.Popen(
                [sys.executable, "-m", "app.cli.main", *args, *self.config_args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out,
                start_new_session=True, env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})
        run = CliRun(number, what, process, log)
        threading.Thread(target=process.wait, daemon=True).start()  # reaped when it ends
        with self._lock:
            self.runs.append(run)
        return run

    def recent(self, limit: int = 5) -> list[CliRun]:
        with self._lock:
            return list(reversed(self.runs[-limit:]))


@dataclass
class Job:
    number: int
    what: str
    status: str = "Running"          # Running | Done | Failed
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None


class Jobs:
    """Threads doing one library call each; their state is polled by number."""

    def __init__(self, describe_error: Callable[[BaseException], str]):
        self.describe_error = describe_error
        self.jobs: dict[int, Job] = {}
        self._numbers = itertools.count(1)
        self._serial = threading.Lock()   # the local engine runs one workflow at a time

    def start(self, what: str, call: Callable[[], Any]) -> Job:
        job = Job(next(self._numbers), what)
        self.jobs[job.number] = job

        def body() -> None:
            try:
                with self._serial:
                    job.result = call()
                job.status = "Done"
            except BaseException as exc:  # shown on the page; the server goes on
                job.error = self.describe_error(exc)
                job.status = "Failed"
            finally:
                job.ended = time.time()

        threading.Thread(target=body, daemon=True, name=f"studio-job-{job.number}").start()
        return job

    def get(self, number: int) -> Job | None:
        return self.jobs.get(number)
