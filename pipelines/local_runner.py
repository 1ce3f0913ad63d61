"""Run a SageMaker Pipeline definition on this machine: the embedded default.

The input is the JSON `pipeline.definition()` produces - the same document SageMaker would
run - never a re-implementation of our pipeline. Steps run in dependency order (DependsOn
plus data references); Condition steps pick a branch and only that branch runs.

    Processing    ContainerEntrypoint + ContainerArguments as a subprocess; inputs copied
                  from the object store, outputs uploaded after, PropertyFiles parsed.
    Training      sagemaker_program from sagemaker_submit_directory, with SageMaker's
                  training environment (SM_*); model dir -> <S3OutputPath>/<job>/output/
                  model.tar.gz; metrics parsed from the log with MetricDefinitions.
    RegisterModel into the LocalRegistry.
    Condition     Std:Condition expressions -> IfSteps or ElseSteps.
    Fail          the execution fails with the resolved ErrorMessage.

Container paths (/opt/ml/...) map into <workspace>/executions/<id>/<step>/, and
`python`/`python3` inside a step mean the interpreter running this module.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import string
import subprocess
import sys
import tarfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO
from urllib.parse import urlparse

from scones.config import Config
from scones.errors import PipelineExecutionError, SconesError
from pipelines.executions import ExecutionStore, now
from pipelines.expressions import (Context, evaluate_conditions, resolve, step_references,
                                   to_text)
from scones.backend import LocalBackend

SUPPORTED_STEP_TYPES = ("Processing", "Training", "RegisterModel", "Condition", "Fail")
PARAMETER_TYPES = ("String", "Integer", "Float", "Boolean")
LOG_TAIL_LINES = 15
_OPT_ML = re.compile(r"(?<![\w/.])/opt/ml(?=/|$)")
_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")


class StepFailed(Exception):
    """A step ended Failed; the message is its failure reason."""


@dataclass
class StepResult:
    name: str
    type: str
    status: str
    seconds: float
    failure_reason: str | None = None
    log_path: str | None = None


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
                "Steps": [{"Name": s.name, "Type": s.type, "Status": s.status,
                           "Seconds": s.seconds, "FailureReason": s.failure_reason}
                          for s in self.steps]}


# --- parameters ----------------------------------------------------------------------------

def _typed(name: str, kind: str, value: Any) -> Any:
    try:
        if kind == "String":
            if isinstance(value, (dict, list)):
                raise ValueError
            return to_text(value)
        if kind == "Integer":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).strip())
        if kind == "Float":
            if isinstance(value, bool):
                raise ValueError
            return float(str(value).strip()) if isinstance(value, str) else float(value)
        if kind == "Boolean":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "false"):
                return text == "true"
            raise ValueError
    except (TypeError, ValueError):
        raise PipelineExecutionError(
            f"parameter {name} is {kind}: {value!r} is not a valid {kind.lower()}") from None
    raise PipelineExecutionError(f"parameter {name} has unsupported type {kind!r} "
                                 f"(supported: {', '.join(PARAMETER_TYPES)})")


def resolve_parameters(definition: dict, overrides: dict | None) -> dict[str, Any]:
    """Defaults from the definition, then overrides, each typed by the parameter's Type."""
    declared = {p["Name"]: p for p in definition.get("Parameters", [])}
    unknown = sorted(set(overrides or {}) - set(declared))
    if unknown:
        raise PipelineExecutionError(
            f"unknown pipeline parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(declared) or '(none)'}")
    values = {}
    for name, spec in declared.items():
        kind = spec.get("Type", "String")
        if overrides and name in overrides:
            values[name] = _typed(name, kind, overrides[name])
        elif "DefaultValue" in spec:
            values[name] = _typed(name, kind, spec["DefaultValue"])
        else:
            raise PipelineExecutionError(f"parameter {name} has no default: pass a value "
                                         f"(--param {name}=...)")
    return values


# --- the plan: which steps, in what order ----------------------------------------------------

@dataclass
class _PlannedStep:
    spec: dict
    branch: tuple[str, bool] | None      # (condition step, outcome it needs) or None
    depends_on: set[str]


def plan(definition: dict) -> dict[str, _PlannedStep]:
    """Every step (top-level and inside Condition branches), with what it waits for.
    Unsupported step types and references to unknown steps are errors before anything runs."""
    steps: dict[str, _PlannedStep] = {}

    def add(spec: dict, branch):
        name, kind = spec.get("Name"), spec.get("Type")
        if not name:
            raise PipelineExecutionError(f"a step without a Name: {json.dumps(spec)[:200]}")
        if name in steps:
            raise PipelineExecutionError(f"step name {name!r} is used twice")
        if kind not in SUPPORTED_STEP_TYPES:
            raise PipelineExecutionError(
                f"step {name!r} has type {kind!r}, which the local runner cannot run "
                f"(it runs: {', '.join(SUPPORTED_STEP_TYPES)}); run this pipeline on SageMaker "
                "(--env aws)")
        arguments = spec.get("Arguments", {})
        nested = []
        if kind == "Condition":
            nested = [(s, (name, True)) for s in arguments.get("IfSteps", [])] + \
                     [(s, (name, False)) for s in arguments.get("ElseSteps", [])]
            arguments = {k: v for k, v in arguments.items() if k not in ("IfSteps", "ElseSteps")}
        depends = set(spec.get("DependsOn", [])) | set(step_references(arguments))
        if branch:
            depends.add(branch[0])
        steps[name] = _PlannedStep(spec, branch, depends)
        for child, child_branch in nested:
            add(child, child_branch)

    for spec in definition.get("Steps", []):
        add(spec, None)
    for name, planned in steps.items():
        missing = sorted(planned.depends_on - set(steps))
        if missing:
            raise PipelineExecutionError(f"step {name!r} refers to unknown step(s) "
                                         f"{', '.join(missing)}")
        if name in planned.depends_on:
            raise PipelineExecutionError(f"step {name!r} depends on itself")
    return steps


# --- the runner ---------------------------------------------------------------------------

def _new_execution_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(12))


def _utc_now() -> str:
    return now()


def run_pipeline_locally(definition: dict, config: Config, parameters: dict | None = None,
                         progress: bool = True) -> ExecutionResult:
    """Run `definition` (pipeline.definition() as a dict) and record the execution."""
    runner = _Runner(definition, config, parameters, sys.stderr if progress else None)
    return runner.run()


class _Runner:
    def __init__(self, definition: dict, config: Config, parameters: dict | None,
                 out: TextIO | None):
        if not isinstance(definition, dict) or "Steps" not in definition:
            raise PipelineExecutionError("not a pipeline definition: expected a JSON object "
                                         "with Steps")
        self.definition = definition
        self.config = config
        self.out = out
        self.parameters = resolve_parameters(definition, parameters)
        self.steps = plan(definition)
        self.backend = LocalBackend(config)
        self.workspace = self.backend.workspace
        self.store = self.backend.object_store()
        self.records = ExecutionStore(self.workspace)
        self.execution_id = _new_execution_id()
        self.pipeline_name = config.pipeline.name
        self.pipeline_arn = (f"arn:aws:sagemaker:{config.aws.region}:{self.backend.account_id}:"
                             f"pipeline/{self.pipeline_name.lower()}")
        self.execution_arn = f"{self.pipeline_arn}/execution/{self.execution_id}"
        self.folder = self.workspace.execution_dir(self.execution_id)
        self.started = _utc_now()
        self.ctx = Context(
            parameters=self.parameters,
            execution={
                "PipelineExecutionId": self.execution_id,
                "PipelineExecutionArn": self.execution_arn,
                "PipelineName": self.pipeline_name,
                "PipelineArn": self.pipeline_arn,
                "StartDateTime": self.started,
                "CurrentDateTime": _utc_now,
            },
            read_url=self.store.read_bytes,
        )

    def say(self, line: str) -> None:
        if self.out:
            print(line, file=self.out, flush=True)

    def run(self) -> ExecutionResult:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.records.start(self.execution_id, self.execution_arn, self.pipeline_name,
                           self.started, self.parameters)
        self.say(f"pipeline {self.pipeline_name}: execution {self.execution_id} "
                 f"({len(self.parameters)} parameters)")
        results: list[StepResult] = []
        outcomes: dict[str, bool] = {}     # condition step -> outcome
        done: set[str] = set()
        failure: str | None = None
        status = "Failed"
        try:
            while failure is None:
                step = self._next_step(done, outcomes)
                if step is None:
                    break
                result, outcome = self._run_step(step)
                results.append(result)
                done.add(step.spec["Name"])
                if outcome is not None:
                    outcomes[step.spec["Name"]] = outcome
                if result.status != "Succeeded":
                    failure = result.failure_reason or f"step {result.name} failed"
            status = "Succeeded" if failure is None else "Failed"
        except KeyboardInterrupt:
            failure, status = "interrupted", "Stopped"
            raise
        except BaseException as exc:  # record, then let the caller see it
            failure = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.records.finish(self.execution_id, status, failure)
            self.say(f"execution {self.execution_id} {status}"
                     + (f": {failure}" if failure else ""))
        return ExecutionResult(self.execution_id, self.execution_arn, status, results, failure,
                               self.parameters, dict(self.ctx.steps))

    def _next_step(self, done: set[str], outcomes: dict[str, bool]) -> _PlannedStep | None:
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

    # -- one step --

    def _run_step(self, step: _PlannedStep) -> tuple[StepResult, bool | None]:
        spec = step.spec
        name, kind = spec["Name"], spec["Type"]
        step_dir = self.folder / _safe_name(name)
        log_path = step_dir / "log.txt" if kind in ("Processing", "Training") else None
        self.records.step_started(self.execution_id, name, kind,
                                  str(log_path) if log_path else None)
        self.say(f"▶ {name} ({kind}) started")
        start = time.monotonic()
        outcome = None
        reason = None
        try:
            handler: Callable = getattr(self, f"_step_{kind.lower()}")
            outcome = handler(spec, step_dir, log_path)
            status = "Succeeded"
        except StepFailed as exc:
            status, reason = "Failed", str(exc)
        except (SconesError, OSError) as exc:
            # a bad reference, an object URL that escapes, a disk error: this step fails,
            # with the message saying why
            status, reason = "Failed", str(exc)
        except BaseException as exc:  # interrupted (or a bug): the record must not say Executing
            self.records.step_finished(self.execution_id, name, "Stopped",
                                       round(time.monotonic() - start, 2),
                                       f"{type(exc).__name__}: {exc}")
            raise
        seconds = round(time.monotonic() - start, 2)
        self.records.step_finished(self.execution_id, name, status, seconds, reason)
        self.say(f"{'✔' if status == 'Succeeded' else '✘'} {name} {status} in {seconds:.1f} s"
                 + (f": {reason}" if reason and kind != "Fail" else ""))
        return StepResult(name, kind, status, seconds, reason,
                          str(log_path) if log_path else None), outcome

    def _resolve(self, spec: dict) -> dict:
        return resolve(spec.get("Arguments", {}), self.ctx, f"step {spec['Name']}")

    def _step_condition(self, spec, step_dir, log_path) -> bool:
        arguments = {k: v for k, v in spec.get("Arguments", {}).items()
                     if k not in ("IfSteps", "ElseSteps")}
        outcome = evaluate_conditions(arguments.get("Conditions", []), self.ctx,
                                      f"step {spec['Name']}")
        self.ctx.steps[spec["Name"]] = {"Outcome": "True" if outcome else "False"}
        self.say(f"  {spec['Name']}: conditions are {outcome}; running the "
                 f"{'If' if outcome else 'Else'} branch")
        return outcome

    def _step_fail(self, spec, step_dir, log_path) -> None:
        message = to_text(self._resolve(spec).get("ErrorMessage", ""))
        self.ctx.steps[spec["Name"]] = {"ErrorMessage": message}
        raise StepFailed(message or f"the pipeline reached Fail step {spec['Name']}")

    def _step_registermodel(self, spec, step_dir, log_path) -> None:
        arguments = self._resolve(spec)
        containers = arguments.get("InferenceSpecification", {}).get("Containers") or [{}]
        model_url = containers[0].get("ModelDataUrl")
        if not isinstance(model_url, str) or not self.store.exists(model_url):
            raise StepFailed(f"ModelDataUrl {model_url!r} is not in the object store")
        arguments.pop("SkipModelValidation", None)  # a SageMaker-side switch; no meaning here
        package = self.backend.registry().register(**arguments)
        self.ctx.steps[spec["Name"]] = package
        self.say(f"  registered {package['ModelPackageGroupName']} version "
                 f"{package['ModelPackageVersion']} as {package['ModelApprovalStatus']}")

    def _step_processing(self, spec, step_dir, log_path) -> None:
        name = spec["Name"]
        arguments = self._resolve(spec)
        job_name = _job_name(self.execution_id, name)
        app = arguments.get("AppSpecification", {})
        entrypoint = app.get("ContainerEntrypoint")
        if not entrypoint:
            raise StepFailed(f"step {name}: AppSpecification has no ContainerEntrypoint, and "
                             "the local runner cannot run an image's built-in entrypoint")
        step_dir.mkdir(parents=True, exist_ok=True)
        for item in arguments.get("ProcessingInputs", []):
            source = item.get("S3Input")
            if not source:
                raise StepFailed(f"step {name}: input {item.get('InputName')} is not an S3Input "
                                 "(dataset definitions are not supported locally)")
            if source.get("S3DataType", "S3Prefix") != "S3Prefix":
                raise StepFailed(f"step {name}: input {item.get('InputName')} has S3DataType "
                                 f"{source['S3DataType']}; only S3Prefix runs locally")
            self._fetch(to_text(source["S3Uri"]), self._map(source["LocalPath"], step_dir))
        outputs = arguments.get("ProcessingOutputConfig", {}).get("Outputs", [])
        for item in outputs:
            self._map(item["S3Output"]["LocalPath"], step_dir).mkdir(parents=True, exist_ok=True)
        program = sys.executable if _PYTHON.match(to_text(entrypoint[0])) else entrypoint[0]
        command = [self._map_text(to_text(part), step_dir) for part in [program, *entrypoint[1:]]]
        command += [self._map_text(to_text(a), step_dir) for a in app.get("ContainerArguments", [])]
        env = {k: to_text(v) for k, v in (arguments.get("Environment") or {}).items()}
        self._execute(name, command, env, step_dir, step_dir, log_path)
        property_files = {}
        for item in outputs:
            self._upload(self._map(item["S3Output"]["LocalPath"], step_dir),
                         to_text(item["S3Output"]["S3Uri"]))
        for declared in spec.get("PropertyFiles", []):
            output = next((o for o in outputs if o.get("OutputName") == declared["OutputName"]),
                          None)
            if output is None:
                raise StepFailed(f"step {name}: property file {declared['PropertyFileName']} "
                                 f"names output {declared['OutputName']!r}, which the step "
                                 "does not have")
            path = self._map(output["S3Output"]["LocalPath"], step_dir) / declared["FilePath"]
            try:
                property_files[declared["PropertyFileName"]] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise StepFailed(f"step {name}: property file {declared['PropertyFileName']} "
                                 f"({path}) is missing or not JSON: {exc}") from None
        self.ctx.property_files[name] = property_files
        self.ctx.steps[name] = {
            **arguments, "ProcessingJobName": job_name, "ProcessingJobStatus": "Completed",
            "ProcessingJobArn": self._job_arn("processing-job", job_name),
        }

    def _step_training(self, spec, step_dir, log_path) -> None:
        name = spec["Name"]
        arguments = self._resolve(spec)
        job_name = _job_name(self.execution_id, name)
        hyperparameters = {k: _decode(to_text(v))
                           for k, v in (arguments.get("HyperParameters") or {}).items()}
        program = hyperparameters.get("sagemaker_program")
        submit = hyperparameters.get("sagemaker_submit_directory")
        if not program or not submit:
            raise StepFailed(f"step {name}: HyperParameters need sagemaker_program and "
                             "sagemaker_submit_directory (a script-mode estimator); bring-your-"
                             "own-container training does not run locally")
        code_dir = step_dir / "code"
        model_dir, output_data = step_dir / "model", step_dir / "output" / "data"
        for folder in (code_dir, model_dir, output_data, step_dir / "input" / "config"):
            folder.mkdir(parents=True, exist_ok=True)
        self._fetch_code(str(submit), code_dir, name)
        channels = {}
        for channel in arguments.get("InputDataConfig", []):
            source = channel.get("DataSource", {}).get("S3DataSource")
            if not source:
                raise StepFailed(f"step {name}: channel {channel.get('ChannelName')} is not an "
                                 "S3DataSource")
            target = step_dir / "input" / "data" / channel["ChannelName"]
            self._fetch(to_text(source["S3Uri"]), target)
            channels[channel["ChannelName"]] = str(target)
        user_hps = {k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")}
        user_args = []
        for key, value in user_hps.items():
            user_args += [f"--{key}", to_text(value)]
        env = _training_env(job_name, step_dir, code_dir, model_dir, output_data, channels,
                            hyperparameters, user_hps, user_args, str(program), str(submit))
        env.update({k: to_text(v) for k, v in (arguments.get("Environment") or {}).items()})
        (step_dir / "input" / "config" / "hyperparameters.json").write_text(
            json.dumps({k: to_text(v) for k, v in hyperparameters.items()}))
        script = code_dir / str(program)
        if not script.is_file():
            raise StepFailed(f"step {name}: sagemaker_program {program!r} is not in "
                             f"{submit}")
        runner = [sys.executable] if script.suffix == ".py" else ["/bin/sh"]
        self._execute(name, [*runner, str(script), *user_args], env, code_dir, step_dir,
                      log_path)

        output_path = to_text(arguments.get("OutputDataConfig", {}).get("S3OutputPath", ""))
        if not output_path.startswith("s3://"):
            raise StepFailed(f"step {name}: OutputDataConfig.S3OutputPath {output_path!r} is "
                             "not an s3:// URL")
        base = f"{output_path.rstrip('/')}/{job_name}/output"
        model_url = f"{base}/model.tar.gz"
        self._tar_to(model_dir, model_url)
        if any(output_data.iterdir()):
            self._tar_to(output_data, f"{base}/output.tar.gz")
        metrics = _final_metrics(log_path.read_text(errors="replace"),
                                 arguments.get("AlgorithmSpecification", {})
                                 .get("MetricDefinitions", []))
        self.ctx.steps[name] = {
            **arguments, "TrainingJobName": job_name, "TrainingJobStatus": "Completed",
            "TrainingJobArn": self._job_arn("training-job", job_name),
            "ModelArtifacts": {"S3ModelArtifacts": model_url},
            "FinalMetricDataList": metrics,
        }
        for metric in metrics:
            self.say(f"  {name} metric {metric['MetricName']} = {metric['Value']}")

    # -- helpers --

    def _job_arn(self, kind: str, job_name: str) -> str:
        return self.pipeline_arn.replace(f"pipeline/{self.pipeline_name.lower()}",
                                         f"{kind}/{job_name}")

    def _map(self, container_path: str, step_dir: Path) -> Path:
        path = to_text(container_path)
        if not _OPT_ML.match(path):
            raise StepFailed(f"container path {path!r} is not under /opt/ml/, so it has no "
                             "place in the step's folder")
        return Path(self._map_text(path, step_dir))

    def _map_text(self, text: str, step_dir: Path) -> str:
        """Every /opt/ml path inside an argument, moved into the step's folder."""
        return _OPT_ML.sub(str(step_dir).replace("\\", "/"), text)

    def _fetch(self, url: str, target: Path) -> None:
        """Copy an object or prefix into target; local paths and file:// URLs are read
        where they are (the local config's data lives outside the workspace)."""
        if url.startswith("s3://"):
            urls = self.store.list_urls(url)
            if not urls:
                raise StepFailed(f"nothing in the object store at {url} "
                                 f"(looked in {self.store.path_for(url)})")
            target.mkdir(parents=True, exist_ok=True)
            prefix = url.rstrip("/")
            for object_url in urls:
                relative = object_url[len(prefix):].lstrip("/") or object_url.rsplit("/", 1)[-1]
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.store.path_for(object_url), destination)
            return
        parsed = urlparse(url)
        if parsed.scheme not in ("", "file"):
            raise StepFailed(f"cannot read {url!r} locally: only s3:// (the workspace's object "
                             "store), file:// and local paths")
        source = Path(parsed.path if parsed.scheme == "file" else url).expanduser()
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.is_file():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / source.name)
        else:
            raise StepFailed(f"input {url} does not exist")

    def _fetch_code(self, url: str, code_dir: Path, step: str) -> None:
        archive = code_dir.parent / "sourcedir.tar.gz"
        if url.startswith("s3://"):
            archive.write_bytes(self.store.read_bytes(url))
        else:
            parsed = urlparse(url)
            archive = Path(parsed.path if parsed.scheme == "file" else url)
            if archive.is_dir():
                shutil.copytree(archive, code_dir, dirs_exist_ok=True)
                return
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(code_dir, filter="data")  # refuses members escaping code_dir
        except (tarfile.TarError, OSError) as exc:
            raise StepFailed(f"step {step}: cannot unpack the training code {url}: {exc}") \
                from None

    def _upload(self, folder: Path, url: str) -> None:
        self.store.path_for(url)  # refuse an escaping URL before writing anything
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.store.upload_file(path, f"{url.rstrip('/')}/"
                                             f"{path.relative_to(folder).as_posix()}")

    def _tar_to(self, folder: Path, url: str) -> None:
        destination = self.store.path_for(url)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.partial")
        with tarfile.open(partial, "w:gz") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=path.name)
        partial.replace(destination)

    def _execute(self, step: str, command: list[str], env: dict[str, str], cwd: Path,
                 step_dir: Path, log_path: Path) -> None:
        """Run a step's process, streaming its lines (prefixed) and keeping them in log.txt.
        A non-zero exit fails the step with the log's tail as the reason."""
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
                                           text=True, errors="replace", bufsize=1)
            except OSError as exc:
                raise StepFailed(f"step {step}: cannot start {command[0]}: {exc}") from None
            try:
                for line in process.stdout:
                    log.write(line)
                    tail.append(line.rstrip("\n"))
                    self.say(f"  {step} | {line.rstrip()}")
                code = process.wait()
            except BaseException:
                process.kill()
                process.wait()
                raise
        if code != 0:
            lines = "\n".join(tail)
            raise StepFailed(f"step {step} exited with code {code}; last lines of {log_path}:"
                             f"\n{lines}")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _job_name(execution_id: str, step: str) -> str:
    """SageMaker's pattern for the jobs a pipeline starts: pipelines-<execution>-<step>."""
    return f"pipelines-{execution_id}-{re.sub(r'[^A-Za-z0-9-]', '-', step)}"[:63].rstrip("-")


def _decode(text: str) -> Any:
    """Hyperparameters travel JSON-encoded ("\\"train.py\\"", "30"); plain text stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _final_metrics(log: str, definitions: list[dict]) -> list[dict]:
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
                        "Timestamp": _utc_now()})
    return metrics


def _gpu_count() -> int:
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def _training_env(job_name, step_dir, code_dir, model_dir, output_data, channels,
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
