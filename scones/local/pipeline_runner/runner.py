"""The run loop: one execution of a definition, from its first step (a new run) or from
its failed step (a retry), with the record kept as it goes.

    - steps run in dependency order (DependsOn plus data references); a Condition picks a
      branch and only that branch runs;
    - a cacheable step (CacheConfig) whose key matches an earlier Succeeded run within
      ExpireAfter reuses that run's outputs (reported with a CacheHitResult);
    - SIGTERM is handled as Ctrl-C is: the step's job is stopped, the run recorded Stopped;
    - a heartbeat thread keeps the record's lease fresh, so a runner killed outright is
      recognised by whoever reads the executions next (scones.local.pipeline_runner.executions).
"""
from __future__ import annotations

import logging
import secrets
import shutil
import signal
import string
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from scones.local.pipeline_runner.executions import HEARTBEAT_S, ExecutionStore
from scones.local.pipeline_runner.expressions import Context, resolve
from scones.local.pipeline_runner.cache import cache_key
from scones.local.pipeline_runner.container import StepFailed, now, remove_input_copies, safe_name
from scones.local.pipeline_runner.plan import PlannedStep, plan, resolve_parameters
from scones.local.pipeline_runner.steps import StepExecutors, StepRun, StepScope, outputs_digest
from scones.local.pipeline_runner.transfer import Transfer
from scones.local.resources import LocalResources
from scones.config import Config
from scones.errors import (RETRYABLE_STATUSES, ExecutionNotRetryableError, ExecutionStopped,
                           PipelineExecutionError, SconesError)

_log = logging.getLogger(__name__)


@dataclass
class StepResult:
    name: str
    type: str
    status: str
    seconds: float
    failure_reason: str | None = None
    log_path: str | None = None
    cache_source_arn: str | None = None

    def to_dict(self) -> dict:
        return {"Name": self.name, "Type": self.type, "Status": self.status,
                "Seconds": self.seconds, "FailureReason": self.failure_reason,
                "CacheHitResult": ({"SourcePipelineExecutionArn": self.cache_source_arn}
                                   if self.cache_source_arn else None)}


@dataclass
class ExecutionResult:
    execution_id: str
    execution_arn: str
    status: str                      # 'Succeeded' | 'Failed'
    steps: list[StepResult]
    failure_reason: str | None
    parameters: dict[str, Any]
    properties: dict[str, dict] = field(default_factory=dict, repr=False)

    @property
    def model_package_version(self) -> int | None:
        """The version a RegisterModel step registered in this execution, if any."""
        for properties in self.properties.values():
            if isinstance(properties, dict) and "ModelPackageVersion" in properties:
                return properties["ModelPackageVersion"]
        return None

    def to_dict(self) -> dict:
        """The executors' common shape (pipelines.executors)."""
        return {"ExecutionId": self.execution_id, "ExecutionArn": self.execution_arn,
                "Status": self.status, "FailureReason": self.failure_reason,
                "ModelPackageVersion": self.model_package_version,
                "Steps": [s.to_dict() for s in self.steps]}


def _new_execution_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(12))


def run_pipeline_locally(definition: dict, config: Config, parameters: dict | None = None,
                         progress: bool = True) -> ExecutionResult:
    """Run `definition` (pipeline.definition() as a dict) and record the execution."""
    return _Runner(definition, config, parameters, sys.stderr if progress else None).run()


def retry_pipeline_locally(execution_id: str, config: Config,
                           progress: bool = True) -> ExecutionResult:
    """RetryPipelineExecution locally: the same execution (id, definition, parameters) runs
    again from its failed step; the steps that succeeded keep their outputs."""
    records = ExecutionStore(LocalResources(config).workspace)
    execution = records.get(execution_id)   # marks it Failed first if its runner died
    if execution["Status"] not in RETRYABLE_STATUSES:
        raise ExecutionNotRetryableError(
            f"execution {execution_id} is {execution['Status']}: only a Failed or Stopped "
            "execution can be retried" + (" (start a new one: scones pipeline run)"
                                          if execution["Status"] == "Succeeded" else ""))
    if not execution["Definition"]:
        raise ExecutionNotRetryableError(
            f"execution {execution_id} was recorded without its definition (by an older "
            "version), so it cannot be retried; start a new one: scones pipeline run")
    runner = _Runner(execution["Definition"], config, execution["Parameters"],
                     sys.stderr if progress else None, retry_of=execution)
    return runner.run()


class _Runner:
    def __init__(self, definition: dict, config: Config, parameters: dict | None,
                 out: TextIO | None, retry_of: dict | None = None):
        if not isinstance(definition, dict) or "Steps" not in definition:
            raise PipelineExecutionError("not a pipeline definition: expected a JSON object "
                                         "with Steps")
        self.definition = definition
        self.out = out
        self.parameters = resolve_parameters(definition, parameters)
        self.steps = plan(definition)
        self.backend = LocalResources(config)
        self.workspace = self.backend.workspace
        self.store = self.backend.object_store()
        self.records = ExecutionStore(self.workspace)
        self.records.mark_dead_runs()
        self.retry_of = retry_of
        self.execution_id = retry_of["ExecutionId"] if retry_of else _new_execution_id()
        self.pipeline_name = retry_of["PipelineName"] if retry_of else config.pipeline.name
        self.pipeline_arn = (f"arn:aws:sagemaker:{config.aws.region}:{self.backend.account_id}:"
                             f"pipeline/{self.pipeline_name.lower()}")
        self.execution_arn = f"{self.pipeline_arn}/execution/{self.execution_id}"
        self.folder = self.workspace.execution_dir(self.execution_id)
        self.started = retry_of["StartTime"] if retry_of else now()
        self.ctx = Context(
            parameters=self.parameters,
            execution={
                "PipelineExecutionId": self.execution_id,
                "PipelineExecutionArn": self.execution_arn,
                "PipelineName": self.pipeline_name,
                "PipelineArn": self.pipeline_arn,
                "StartDateTime": self.started,
                "CurrentDateTime": now,
            },
            read_url=self.store.read_bytes,
        )
        self.transfer = Transfer(self.store, self.workspace.root)
        self.executors = StepExecutors(StepScope(
            self.execution_id, self.pipeline_name, self.pipeline_arn, self.ctx, self.transfer,
            self.backend.registry, self.say))

    def say(self, line: str) -> None:
        if self.out:
            print(line, file=self.out, flush=True)

    # -- the run --------------------------------------------------------------------------

    def run(self) -> ExecutionResult:
        self.folder.mkdir(parents=True, exist_ok=True)
        results: list[StepResult] = []
        outcomes: dict[str, bool] = {}     # condition step -> outcome
        done: set[str] = set()
        if self.retry_of:
            results = self._reuse_succeeded_steps(done, outcomes)
            self.records.restart(self.execution_id)
            self.say(f"pipeline {self.pipeline_name}: retrying execution {self.execution_id} "
                     f"from its failed step ({len(done)} step(s) reused)")
        else:
            self.records.start(self.execution_id, self.execution_arn, self.pipeline_name,
                               self.started, self.parameters, self.definition)
            self.say(f"pipeline {self.pipeline_name}: execution {self.execution_id} "
                     f"({len(self.parameters)} parameters)")
        failure: str | None = None
        status = "Failed"
        with _Heartbeat(self.records, self.execution_id), _StopOnSigterm():
            try:
                while failure is None:
                    step = self._next_step(done, outcomes)
                    if step is None:
                        break
                    result, outcome = self._run_step(step)
                    results.append(result)
                    done.add(step.name)
                    if outcome is not None:
                        outcomes[step.name] = outcome
                    if result.status != "Succeeded":
                        failure = result.failure_reason or f"step {result.name} failed"
                status = "Succeeded" if failure is None else "Failed"
            except KeyboardInterrupt as exc:
                number = getattr(exc, "signal_number", signal.SIGINT)
                failure, status = (f"stopped by {signal.Signals(number).name} (retry it: "
                                   f"scones pipeline retry {self.execution_id})"), "Stopped"
                raise ExecutionStopped(self.execution_id, number) from None
            except BaseException as exc:  # record, then let the caller see it
                failure = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                self.records.finish(self.execution_id, status, failure)
                self.say(f"execution {self.execution_id} {status}"
                         + (f": {failure}" if failure else ""))
        return ExecutionResult(self.execution_id, self.execution_arn, status, results, failure,
                               self.parameters, dict(self.ctx.steps))

    def _reuse_succeeded_steps(self, done: set[str], outcomes: dict[str, bool]) \
            -> list[StepResult]:
        """A retry starts where the execution failed: each step that succeeded (and whose
        properties were recorded) counts as done, with its properties in the context."""
        reused = []
        for step in self.retry_of["Steps"]:
            stored = step.get("Properties")
            if step["Status"] != "Succeeded" or stored is None or step["Name"] not in self.steps:
                continue
            self.ctx.steps[step["Name"]] = stored.get("Properties", {})
            self.ctx.property_files[step["Name"]] = stored.get("PropertyFiles", {})
            if step["Type"] == "Condition":
                outcomes[step["Name"]] = stored.get("Properties", {}).get("Outcome") == "True"
            done.add(step["Name"])
            reused.append(StepResult(step["Name"], step["Type"], "Succeeded",
                                     step["Seconds"] or 0.0, None, step.get("LogPath"),
                                     (step.get("CacheHitResult") or {})
                                     .get("SourcePipelineExecutionArn")))
        return reused

    def _next_step(self, done: set[str], outcomes: dict[str, bool]) -> PlannedStep | None:
        """The first step, in definition order, whose branch was taken and whose
        dependencies all ran; None when nothing more can run."""
        for name, step in self.steps.items():
            if name in done:
                continue
            if step.branch and outcomes.get(step.branch[0]) is not step.branch[1]:
                continue
            if step.depends_on <= done:
                return step
        return None

    # -- one step -------------------------------------------------------------------------

    def _run_step(self, planned: PlannedStep) -> tuple[StepResult, bool | None]:
        spec = planned.spec
        name, kind = spec["Name"], spec["Type"]
        step_dir = self.folder / safe_name(name)
        if step_dir.exists():  # a retried step starts from an empty folder
            shutil.rmtree(step_dir)
        log_path = step_dir / "log.txt" if kind in ("Processing", "Training") else None
        step = StepRun(name, step_dir, log_path)
        self.records.step_started(self.execution_id, name, kind,
                                  str(log_path) if log_path else None)
        self.say(f"▶ {name} ({kind}) started")
        start = time.monotonic()
        outcome = None
        reason = None
        key = source_arn = source_digest = None
        try:
            arguments = None if kind == "Condition" else resolve(
                spec.get("Arguments", {}), self.ctx, f"step {name}")
            if planned.cache_expiry is not None:
                key = cache_key(kind, arguments, self.transfer.digest)
                source_arn, source_digest = self._from_cache(planned, key)
            if source_arn is None:
                step_dir.mkdir(parents=True, exist_ok=True)
                outcome = self.executors.run(kind, spec, arguments, step)
            status = "Succeeded"
        except StepFailed as exc:
            status, reason = "Failed", str(exc)
        except (SconesError, OSError) as exc:
            # a bad reference, an object URL that escapes, a disk error: this step fails,
            # with the message saying why
            status, reason = "Failed", str(exc)
        except BaseException as exc:  # interrupted (or a bug): the record must not say Executing
            remove_input_copies(step_dir)
            self.records.step_finished(self.execution_id, name, "Stopped",
                                       round(time.monotonic() - start, 2),
                                       f"{type(exc).__name__}: {exc}")
            raise
        remove_input_copies(step_dir)
        seconds = round(time.monotonic() - start, 2)
        properties = None
        if status == "Succeeded":
            properties = {"Properties": self.ctx.steps.get(name, {}),
                          "PropertyFiles": self.ctx.property_files.get(name, {})}
            if key is not None:
                # what a later cache hit checks the outputs against (see _from_cache)
                properties["OutputDigest"] = (
                    source_digest if source_arn else
                    outputs_digest(kind, properties["Properties"], self.store))
        self.records.step_finished(self.execution_id, name, status, seconds, reason,
                                   properties, key if status == "Succeeded" else None,
                                   source_arn)
        self.say(f"{'✔' if status == 'Succeeded' else '✘'} {name} {status} in {seconds:.1f} s"
                 + (f" (cache hit: outputs of {source_arn.rpartition('/')[2]})"
                    if source_arn else "")
                 + (f": {reason}" if reason and kind != "Fail" else ""))
        return StepResult(name, kind, status, seconds, reason,
                          str(log_path) if log_path and not source_arn else None,
                          source_arn), outcome

    def _from_cache(self, planned: PlannedStep, key: str) -> tuple[str | None, str | None]:
        """Reuse the newest earlier Succeeded run of this step with the same key within
        ExpireAfter whose outputs are still there and still hash to the content hash
        recorded with the entry; (its execution ARN, that hash), or (None, None): a miss.
        Outputs changed since (a model.tar.gz damaged on disk) are a logged miss: the step
        runs again instead of every later run failing on them."""
        kind = planned.spec["Type"]
        for entry in self.records.find_cached(self.pipeline_name, planned.name, key,
                                              planned.cache_expiry):
            if entry["ExecutionArn"] == self.execution_arn:
                continue
            stored = entry["Properties"]
            recorded = stored.get("OutputDigest")
            found = outputs_digest(kind, stored.get("Properties", {}), self.store)
            if found is None:
                continue  # outputs gone: an ordinary miss
            if found != recorded:
                why = ("its outputs changed on disk since (content hash mismatch)" if recorded
                       else "it recorded no content hash of its outputs")
                message = (f"{planned.name}: cache miss: the entry of execution "
                           f"{entry['ExecutionArn'].rpartition('/')[2]} is not reused, {why}; "
                           "running the step again")
                _log.warning(message)
                self.say(f"  {message}")
                continue
            self.ctx.steps[planned.name] = stored.get("Properties", {})
            self.ctx.property_files[planned.name] = stored.get("PropertyFiles", {})
            # a hit of a hit names the run that made the outputs, as SageMaker does
            return entry["CacheSourceArn"] or entry["ExecutionArn"], recorded
        return None, None


class _Heartbeat:
    """Refreshes the execution's heartbeat every HEARTBEAT_S seconds while the run lasts."""

    def __init__(self, records: ExecutionStore, execution_id: str):
        self.records, self.execution_id = records, execution_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="scones-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                self.records.heartbeat(self.execution_id)
            except SconesError:
                pass  # a busy database: the next beat tries again

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()


class _Terminated(KeyboardInterrupt):
    signal_number = signal.SIGTERM


class _StopOnSigterm:
    """SIGTERM raises in the main thread as Ctrl-C does, once: a second SIGTERM while the
    run is being stopped does not interrupt the stopping. Elsewhere (a thread) a no-op."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        self.stopping = False
        return self

    def _handle(self, signum, frame) -> None:
        if not self.stopping:
            self.stopping = True
            raise _Terminated()

    def __exit__(self, *exc_info) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
