"""The step executors: one per step type the local runner runs.

    Processing    ContainerEntrypoint + ContainerArguments as a subprocess; inputs copied
                  from the object store, outputs uploaded after, PropertyFiles parsed.
    Training      sagemaker_program from sagemaker_submit_directory, with SageMaker's
                  training environment (SM_*); model dir -> <S3OutputPath>/<job>/output/
                  model.tar.gz; metrics parsed from the log with MetricDefinitions.
    RegisterModel into the workspace's registry.
    Condition     Std:Condition expressions -> IfSteps or ElseSteps.
    Fail          the execution fails with the resolved ErrorMessage.

Each executor gets the step's arguments already resolved and leaves the step's properties
(what `{"Get": "Steps.X..."}` reads later) in the context.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from scones.local.pipeline_runner.expressions import Context, evaluate_conditions, to_text
from scones.local.pipeline_runner.container import (INPUT_COPIES_FILE, PYTHON, StepFailed,
                                                    decode_hyperparameter, final_metrics,
                                                    job_name, map_path, map_text, run_job,
                                                    training_env)
from scones.local.pipeline_runner.transfer import Transfer

@dataclass
class StepScope:
    """What every executor of one execution shares."""
    execution_id: str
    pipeline_name: str
    pipeline_arn: str
    ctx: Context
    transfer: Transfer
    registry: Callable[[], Any]
    say: Callable[[str], None]
    on_job_start: Callable[[str, int], None] = lambda step, pid: None


@dataclass
class StepRun:
    """One step being run: its folder, its log, the input copies it made."""
    name: str
    folder: Path
    log_path: Path | None
    input_copies: list[Path] = field(default_factory=list)

    def input_copy(self, path: Path) -> Path:
        self.input_copies.append(path)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / INPUT_COPIES_FILE).write_text(json.dumps(
            [str(p.relative_to(self.folder)) for p in self.input_copies]))
        return path


class StepExecutors:
    def __init__(self, scope: StepScope):
        self.scope = scope
        self.ctx = scope.ctx
        self.transfer = scope.transfer

    def run(self, kind: str, spec: dict, arguments: dict | None, step: StepRun) -> bool | None:
        """Run one step; a Condition returns its outcome."""
        return getattr(self, f"_{kind.lower()}")(spec, arguments, step)

    def _job_arn(self, kind: str, name: str) -> str:
        return self.scope.pipeline_arn.replace(
            f"pipeline/{self.scope.pipeline_name.lower()}", f"{kind}/{name}")

    def _run_job(self, step: StepRun, command, env, cwd) -> None:
        run_job(step.name, command, env, cwd, step.folder, step.log_path,
                on_line=lambda line: self.scope.say(f"  {step.name} | {line}"),
                on_start=lambda pid: self.scope.on_job_start(step.name, pid))

    def _condition(self, spec, arguments, step: StepRun) -> bool:
        arguments = {k: v for k, v in spec.get("Arguments", {}).items()
                     if k not in ("IfSteps", "ElseSteps")}
        outcome = evaluate_conditions(arguments.get("Conditions", []), self.ctx,
                                      f"step {spec['Name']}")
        self.ctx.steps[spec["Name"]] = {"Outcome": "True" if outcome else "False"}
        self.scope.say(f"  {spec['Name']}: conditions are {outcome}; running the "
                       f"{'If' if outcome else 'Else'} branch")
        return outcome

    def _fail(self, spec, arguments, step: StepRun) -> None:
        message = to_text(arguments.get("ErrorMessage", ""))
        self.ctx.steps[spec["Name"]] = {"ErrorMessage": message}
        raise StepFailed(message or f"the pipeline reached Fail step {spec['Name']}")

    def _registermodel(self, spec, arguments, step: StepRun) -> None:
        arguments = dict(arguments)
        containers = arguments.get("InferenceSpecification", {}).get("Containers") or [{}]
        model_url = containers[0].get("ModelDataUrl")
        if not isinstance(model_url, str) or not self.transfer.store.exists(model_url):
            raise StepFailed(f"ModelDataUrl {model_url!r} is not in the object store")
        arguments.pop("SkipModelValidation", None)  # a SageMaker-side switch; no meaning here
        package = self.scope.registry().register(**arguments)
        self.ctx.steps[spec["Name"]] = package
        self.scope.say(f"  registered {package['ModelPackageGroupName']} version "
                       f"{package['ModelPackageVersion']} as {package['ModelApprovalStatus']}")

    def _processing(self, spec, arguments, step: StepRun) -> None:
        name, step_dir = spec["Name"], step.folder
        job = job_name(self.scope.execution_id, name)
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
            target = step.input_copy(map_path(source["LocalPath"], step_dir))
            self.transfer.fetch(to_text(source["S3Uri"]), target)
            if item.get("InputName") == "entrypoint":
                # A source_dir job's runproc.sh (FrameworkProcessor) cds into its /opt/ml
                # code folder: that path, too, moves into the step's folder.
                # Its last line runs the job: `exec` it, so the job itself (not a bash
                # around it) carries the parent-death signal and dies with a SIGKILLed runner.
                for script in target.glob("*.sh"):
                    script.write_text(re.sub(r"^(python3? )", r"exec \1",
                                             map_text(script.read_text(), step_dir),
                                             flags=re.M))
        outputs = arguments.get("ProcessingOutputConfig", {}).get("Outputs", [])
        for item in outputs:
            map_path(item["S3Output"]["LocalPath"], step_dir).mkdir(parents=True, exist_ok=True)
        program = sys.executable if PYTHON.match(to_text(entrypoint[0])) else entrypoint[0]
        command = [map_text(to_text(part), step_dir) for part in [program, *entrypoint[1:]]]
        command += [map_text(to_text(a), step_dir) for a in app.get("ContainerArguments", [])]
        env = {k: to_text(v) for k, v in (arguments.get("Environment") or {}).items()}
        self._run_job(step, command, env, step_dir)
        property_files = {}
        for item in outputs:
            self.transfer.upload(map_path(item["S3Output"]["LocalPath"], step_dir),
                                 to_text(item["S3Output"]["S3Uri"]))
        for declared in spec.get("PropertyFiles", []):
            output = next((o for o in outputs if o.get("OutputName") == declared["OutputName"]),
                          None)
            if output is None:
                raise StepFailed(f"step {name}: property file {declared['PropertyFileName']} "
                                 f"names output {declared['OutputName']!r}, which the step "
                                 "does not have")
            path = map_path(output["S3Output"]["LocalPath"], step_dir) / declared["FilePath"]
            try:
                property_files[declared["PropertyFileName"]] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise StepFailed(f"step {name}: property file {declared['PropertyFileName']} "
                                 f"({path}) is missing or not JSON: {exc}") from None
        self.ctx.property_files[name] = property_files
        self.ctx.steps[name] = {
            **arguments, "ProcessingJobName": job, "ProcessingJobStatus": "Completed",
            "ProcessingJobArn": self._job_arn("processing-job", job),
        }

    def _training(self, spec, arguments, step: StepRun) -> None:
        name, step_dir = spec["Name"], step.folder
        job = job_name(self.scope.execution_id, name)
        hyperparameters = {k: decode_hyperparameter(to_text(v))
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
        step.input_copy(step_dir / "sourcedir.tar.gz")
        self.transfer.fetch_code(str(submit), step.input_copy(code_dir), name)
        channels = {}
        for channel in arguments.get("InputDataConfig", []):
            source = channel.get("DataSource", {}).get("S3DataSource")
            if not source:
                raise StepFailed(f"step {name}: channel {channel.get('ChannelName')} is not an "
                                 "S3DataSource")
            target = step.input_copy(step_dir / "input" / "data" / channel["ChannelName"])
            self.transfer.fetch(to_text(source["S3Uri"]), target)
            channels[channel["ChannelName"]] = str(target)
        user_hps = {k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")}
        user_args = []
        for key, value in user_hps.items():
            user_args += [f"--{key}", to_text(value)]
        env = training_env(job, step_dir, code_dir, model_dir, output_data, channels,
                           hyperparameters, user_hps, user_args, str(program), str(submit))
        env.update({k: to_text(v) for k, v in (arguments.get("Environment") or {}).items()})
        (step_dir / "input" / "config" / "hyperparameters.json").write_text(
            json.dumps({k: to_text(v) for k, v in hyperparameters.items()}))
        script = code_dir / str(program)
        if not script.is_file():
            raise StepFailed(f"step {name}: sagemaker_program {program!r} is not in "
                             f"{submit}")
        interpreter = [sys.executable] if script.suffix == ".py" else ["/bin/sh"]
        self._run_job(step, [*interpreter, str(script), *user_args], env, code_dir)

        output_path = to_text(arguments.get("OutputDataConfig", {}).get("S3OutputPath", ""))
        if not output_path.startswith("s3://"):
            raise StepFailed(f"step {name}: OutputDataConfig.S3OutputPath {output_path!r} is "
                             "not an s3:// URL")
        base = f"{output_path.rstrip('/')}/{job}/output"
        model_url = f"{base}/model.tar.gz"
        self.transfer.tar_to(model_dir, model_url)
        if any(output_data.iterdir()):
            self.transfer.tar_to(output_data, f"{base}/output.tar.gz")
        metrics = final_metrics(step.log_path.read_text(errors="replace"),
                                arguments.get("AlgorithmSpecification", {})
                                .get("MetricDefinitions", []))
        self.ctx.steps[name] = {
            **arguments, "TrainingJobName": job, "TrainingJobStatus": "Completed",
            "TrainingJobArn": self._job_arn("training-job", job),
            "ModelArtifacts": {"S3ModelArtifacts": model_url},
            "FinalMetricDataList": metrics,
        }
        for metric in metrics:
            self.scope.say(f"  {name} metric {metric['MetricName']} = {metric['Value']}")


def output_urls(kind: str, properties: dict) -> list[str] | None:
    """The URLs a step's outputs were written to (None when its properties lack one)."""
    if kind == "Training":
        url = (properties.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        return [url] if isinstance(url, str) else None
    urls = []
    for item in (properties.get("ProcessingOutputConfig") or {}).get("Outputs", []):
        url = (item.get("S3Output") or {}).get("S3Uri")
        if not isinstance(url, str):
            return None
        urls.append(url)
    return urls


def outputs_digest(kind: str, properties: dict, store) -> str | None:
    """One content hash of every object a step's outputs hold (names and raw bytes): what
    a cache entry records, so outputs damaged on disk since are not reused. None when an
    output is missing."""
    urls = output_urls(kind, properties)
    if urls is None:
        return None
    digest = hashlib.sha256()
    for url in urls:
        objects = [url] if kind == "Training" else store.list_urls(url)
        if not objects or not all(store.exists(u) for u in objects):
            return None
        prefix = url.rstrip("/")
        for object_url in sorted(objects):
            digest.update(f"{url}\0{object_url[len(prefix):]}\0".encode())
            with open(store.path_for(object_url), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
