"""Run the inference workflow on images, on the embedded default (no AWS account).

The SAME state machine definition that goes to AWS (workflow.definition, the SDK's ASL)
and the SAME Lambda zips (lambdas.build) are deployed into moto's Step Functions engine
(scones.local.stepfunctions_engine); the classify Lambda reaches the local SageMaker endpoint
(scones.local.endpoint, in a child process of its own) over HTTP. One execution per image, a
bounded number at a time.

`run_executions` and `result_from_execution` speak only the Step Functions API, so the
AWS path (run_workflow_on_aws, below) drives real executions with the same code.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from scones.backend import LAMBDA_RUNTIME, backend_for
from scones.config import Config
from scones.console import format_table, progress_bar
from scones.errors import SconesError
from scones.storage import split_s3_url

INPUT_PREFIX = "workflow-input"  # where local image files are put in S3 for a run
MAX_EXECUTION_NAME = 80
# The local engine reports ended executions; this is only the safety sweep's period.
LOCAL_POLL_INTERVAL_S = 0.5
# Beyond the state machine's own TimeoutSeconds (600): moto should have ended it by then.
LOCAL_GIVE_UP_AFTER_S = 660.0
AWS_POLL_INTERVAL_S = 1.0
TRUST_POLICY = {"Version": "2012-10-17", "Statement": []}


@dataclass(frozen=True)
class ImageSource:
    """One image to classify: a local file or an s3:// object. `label` is what the user
    named it by, and what results are reported under."""

    label: str
    path: Path | None = None
    s3_url: str | None = None


@dataclass
class ImageResult:
    image: str
    status: str                       # SUCCEEDED | FAILED (| TIMED_OUT | ABORTED)
    predicted_label: str | None
    inferences: list[float] | None
    meets_threshold: bool | None
    error: str | None
    cause: str | None
    seconds: float | None

    @property
    def confidence(self) -> float | None:
        return max(self.inferences) if self.inferences else None

    @property
    def verdict(self) -> str:
        """met | below threshold | the error's name."""
        if self.status == "SUCCEEDED":
            return "met"
        if self.meets_threshold is False:
            return "not a vehicle" if self.error == "NotAVehicle" else "below threshold"
        return self.error or self.status

    def to_dict(self) -> dict:
        return {"Image": self.image, "Status": self.status,
                "PredictedLabel": self.predicted_label, "Confidence": self.confidence,
                "Inferences": self.inferences, "MeetsThreshold": self.meets_threshold,
                "Verdict": self.verdict, "Error": self.error, "Cause": self.cause,
                "Seconds": self.seconds}

    def line(self) -> str:
        """One line for people: file, predicted label, confidence, verdict."""
        confidence = f"{self.confidence:.3f}" if self.confidence is not None else "-"
        return f"{self.image}  {self.predicted_label or '-'}  {confidence}  {self.verdict}"

    @property
    def failed_otherwise(self) -> bool:
        """Failed for a reason other than the confidence threshold."""
        return self.status != "SUCCEEDED" and self.meets_threshold is not False


# --------------------------------------------------------------------------- inputs


def images_from_options(config: Config, image: str | None = None, images: str | None = None,
                        s3: str | None = None, prefix: str | None = None) -> list[ImageSource]:
    """The images named by exactly one of --image PATH, --images DIR, --s3 URL, --prefix URL.

    Locally, s3:// URLs are objects of the local object store (<workspace>/s3).
    """
    given = [name for name, value in (("--image", image), ("--images", images), ("--s3", s3),
                                       ("--prefix", prefix)) if value]
    if len(given) != 1:
        raise SconesError("name the images with exactly one of --image PATH, --images DIR, "
                          f"--s3 s3://bucket/key, --prefix s3://bucket/prefix (got "
                          f"{', '.join(given) or 'none'})")
    if image:
        path = Path(image).expanduser()
        if not path.is_file():
            raise SconesError(f"--image {image}: no such file")
        return [ImageSource(label=image, path=path.resolve())]
    if images:
        return _files_of_folder(images)
    url = s3 or prefix
    split_s3_url(url)  # a malformed URL is a StorageError naming it
    if s3:
        return [ImageSource(label=s3, s3_url=s3)]
    urls = backend_for(config).object_store().list_urls(prefix)
    if not urls:
        raise SconesError(f"--prefix {prefix}: no objects under it")
    return [ImageSource(label=u, s3_url=u) for u in urls]


def _files_of_folder(images: str) -> list[ImageSource]:
    """Every file under --images DIR, not only *.png (a stray non-image must fail by name,
    not vanish); hidden ones left out. A symbolic link is followed only when it stays inside
    the folder: one leading out (to /etc/shadow, say) is refused by name before anything is
    read or uploaded. Messages name paths, never what files contain."""
    folder = Path(images).expanduser()
    if not folder.is_dir():
        raise SconesError(f"--images {images}: no such folder")
    root = folder.resolve()
    files: list[Path] = []
    refused: list[str] = []
    for directory, subdirs, names in os.walk(folder, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names) + [d for d in subdirs if (Path(directory) / d).is_symlink()]:
            path = Path(directory) / name
            if name.startswith("."):
                continue
            if path.is_symlink():
                target = path.resolve()
                if target != root and root not in target.parents:
                    refused.append(f"{path}: a symbolic link to outside the folder; not read")
                    continue
                if target.is_dir():
                    continue  # inside the folder: its files are listed where they are
            if path.is_file():
                files.append(path)
    if refused:
        shown = "; ".join(refused[:5]) + (f"; and {len(refused) - 5} more" if len(refused) > 5
                                          else "")
        raise SconesError(f"--images {images}: {shown}. Copy the images into the folder "
                          "(or name a file with --image)")
    if not files:
        raise SconesError(f"--images {images}: the folder has no files")
    return [ImageSource(label=str(p), path=p.resolve()) for p in sorted(files)]


def stage_images(config: Config, images: Sequence[ImageSource], s3_client, run_id: str,
                 read_s3_locally: bool) -> list[tuple[str, str]]:
    """(bucket, key) of each image in the S3 the workflow reads: local files are put under
    s3://<aws.bucket>/workflow-input/<run>/; s3:// objects keep their bucket and key (read
    from the local object store and put into moto's S3 when read_s3_locally)."""
    store = backend_for(config).object_store()
    made_buckets: set[str] = set()

    def ensure_bucket(bucket: str) -> None:
        if read_s3_locally and bucket not in made_buckets:
            s3_client.create_bucket(Bucket=bucket)
            made_buckets.add(bucket)

    located = []
    for index, source in enumerate(images):
        if source.path is not None:
            bucket = config.aws.bucket
            key = f"{INPUT_PREFIX}/{run_id}/{index:05d}-{source.path.name}"
            ensure_bucket(bucket)
            s3_client.put_object(Bucket=bucket, Key=key, Body=source.path.read_bytes())
        else:
            bucket, key = split_s3_url(source.s3_url)
            if read_s3_locally:
                ensure_bucket(bucket)
                if store.exists(source.s3_url) and store.path_for(source.s3_url).is_file():
                    s3_client.put_object(Bucket=bucket, Key=key, Body=store.read_bytes(source.s3_url))
                # else: leave it missing, so serialize reports ImageNotFound for this image
        located.append((bucket, key))
    return located


# --------------------------------------------------------------------------- executions


def execution_input(bucket: str, key: str) -> str:
    """The workflow's input event (lambdas/events.py)."""
    return json.dumps({"s3_bucket": bucket, "s3_key": key, "image_data": "", "inferences": []})


def run_executions(sfn_client, state_machine_arn: str, inputs: Sequence[str], labels: Sequence[str],
                   classes: Sequence[str], concurrency: int, poll_interval: float,
                   progress: bool, run_id: str | None = None,
                   ended: Callable[[float], list[str]] | None = None,
                   give_up_after_s: float | None = None) -> list[ImageResult]:
    """Start one execution per input, at most `concurrency` running at once; poll each to
    its end; results in input order.

    ended(timeout): when the engine can say which executions ended (the local one can),
    only those are described; if it reports none within poll_interval, all are checked.
    give_up_after_s: an execution still RUNNING after this long is reported as failed
    (EngineStalled) instead of waiting forever on an engine that lost it.
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    total = len(inputs)
    results: list[ImageResult | None] = [None] * total
    running: dict[str, int] = {}  # execution ARN -> index
    started: dict[str, float] = {}
    next_index = done = 0
    if progress:
        progress_bar(0, total, label="classifying ")
    while done < total:
        while next_index < total and len(running) < max(1, concurrency):
            name = f"{run_id}-{next_index:05d}"[:MAX_EXECUTION_NAME]
            arn = sfn_client.start_execution(stateMachineArn=state_machine_arn, name=name,
                                             input=inputs[next_index])["executionArn"]
            running[arn] = next_index
            started[arn] = time.monotonic()
            next_index += 1
        candidates = list(running)
        if ended is not None:
            candidates = [arn for arn in ended(poll_interval) if arn in running] or candidates
        finished = []
        for arn in candidates:
            index = running[arn]
            description = sfn_client.describe_execution(executionArn=arn)
            if (description["status"] == "RUNNING" and give_up_after_s is not None
                    and time.monotonic() - started[arn] > give_up_after_s):
                description = {**description, "status": "FAILED", "error": "EngineStalled",
                               "cause": f"execution {arn} still RUNNING after "
                                        f"{give_up_after_s:.0f} s; the local engine lost it"}
            if description["status"] != "RUNNING":
                results[index] = result_from_execution(
                    labels[index], description, classes,
                    history=lambda arn=arn: _history(sfn_client, arn))
                finished.append(arn)
        for arn in finished:
            del running[arn]
        done += len(finished)
        if finished and progress:
            progress_bar(done, total, label="classifying ")
        if not finished and ended is None:
            time.sleep(poll_interval)
    return results  # type: ignore[return-value]


def _history(sfn_client, arn: str) -> list[dict]:
    events, token = [], None
    while True:
        page = sfn_client.get_execution_history(executionArn=arn, maxResults=1000,
                                                **({"nextToken": token} if token else {}))
        events += page["events"]
        token = page.get("nextToken")
        if not token:
            return events


def result_from_execution(label: str, description: dict, classes: Sequence[str],
                          history: Callable[[], list[dict]] | None = None) -> ImageResult:
    """One image's result from DescribeExecution (and, when the classify step's
    inferences are not in the output or the Cause, from the execution history)."""
    from lambdas.errors import ThresholdConfidenceNotMet
    from workflow.definition import CLASSIFY_STATE, NOT_A_VEHICLE_ERROR, THRESHOLD_ERROR

    status = description["status"]
    seconds = _seconds(description.get("startDate"), description.get("stopDate"))
    result = ImageResult(image=label, status=status, predicted_label=None, inferences=None,
                         meets_threshold=None, error=description.get("error"),
                         cause=description.get("cause"), seconds=seconds)
    if status == "SUCCEEDED":
        output = json.loads(description.get("output") or "{}")
        result.inferences = output.get("inferences")
        result.predicted_label = output.get("predicted_label")
        result.meets_threshold = bool(output.get("meets_threshold", True))
        return result
    if result.error in (THRESHOLD_ERROR, NOT_A_VEHICLE_ERROR):  # the filter's verdicts
        result.meets_threshold = False
        details = ThresholdConfidenceNotMet.details_from_message(result.cause or "")
        if details:
            result.inferences = details.get("inferences")
            result.predicted_label = details.get("predicted_label")
    if result.inferences is None and history is not None:
        result.inferences = _classified_inferences(history(), CLASSIFY_STATE)
    if result.inferences and result.predicted_label is None:
        best = max(range(len(result.inferences)), key=result.inferences.__getitem__)
        result.predicted_label = classes[best] if best < len(classes) else None
    if result.cause:
        result.cause = _readable_cause(result.cause)
    return result


def _classified_inferences(events: list[dict], classify_state: str) -> list[float] | None:
    """The inferences the classify state passed on, when it finished."""
    for event in reversed(events):
        details = event.get("stateExitedEventDetails")
        if details and details.get("name") == classify_state:
            try:
                output = json.loads(details.get("output") or "{}")
            except ValueError:
                return None
            inferences = output.get("inferences") if isinstance(output, dict) else None
            return inferences or None
    return None


def _readable_cause(cause: str) -> str:
    """A Lambda error's Cause is its JSON error report; people want the message."""
    try:
        report = json.loads(cause)
    except ValueError:
        return cause
    if isinstance(report, dict) and isinstance(report.get("errorMessage"), str):
        return report["errorMessage"]
    return cause


def _seconds(start: Any, stop: Any) -> float | None:
    if isinstance(start, datetime) and isinstance(stop, datetime):
        return round((stop - start).total_seconds(), 4)
    return None


# --------------------------------------------------------------------------- local


def run_workflow_locally(config: Config, images: Sequence[ImageSource],
                         model_version: int | None = None, concurrency: int | None = None,
                         progress: bool = True, model_tar: Path | None = None,
                         keep_endpoint_s: float | None = None) -> list[ImageResult]:
    """Classify each image with one execution of the inference workflow, all local.

    model_version / model_tar pin the model the local endpoint serves (default: the
    deployed one, see scones.local.endpoint).
    """
    if not images:
        raise SconesError("no images to classify")
    with LocalWorkflow(config, model_version=model_version, model_tar=model_tar,
                       reuse_endpoint=keep_endpoint_s is not None,
                       keep_endpoint_s=keep_endpoint_s or None, progress=progress) as workflow:
        return workflow.run(images, concurrency=concurrency, progress=progress)


class LocalWorkflow:
    """The workflow deployed into moto, its endpoint running: set up once, run many times
    (`with LocalWorkflow(config) as wf: wf.run(images)`)."""

    def __init__(self, config: Config, model_version: int | None = None,
                 model_tar: Path | None = None, bulk: bool = False,
                 endpoint_url: str | None = None, reuse_endpoint: bool = False,
                 keep_endpoint_s: float | None = None, progress: bool = False):
        self.config = config
        self.model_version = model_version
        self.model_tar = model_tar
        self.bulk = bulk  # also deploy the bulk state machine and its Lambdas (run_bulk)
        self.endpoint_url = endpoint_url  # a running endpoint to use instead of starting one
        self.endpoint = None
        # Unpinned runs may use the endpoint recorded as running (reuse_endpoint), or leave
        # one running in the background for keep_endpoint_s idle seconds (endpoint/background.py).
        self.reuse_endpoint = reuse_endpoint
        self.keep_endpoint_s = keep_endpoint_s
        self.progress = progress
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "LocalWorkflow":
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def _start(self) -> None:
        from lambdas.build import build_lambda_zips
        from workflow.definition import lambda_functions, workflow_definition_json
        from scones.local.stepfunctions_engine import (DirectDeploy, DirectExecutions, DirectStaging,
                                          check_moto_version, local_aws)

        config = self.config
        check_moto_version()
        definition = workflow_definition_json(config)
        functions = [f for f in lambda_functions(config).values()
                     if f.in_workflow or (self.bulk and f.in_bulk)]
        region = config.aws.region
        zip_dir = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="scones-zips-"))
        zips = build_lambda_zips(zip_dir, keys=[f.key for f in functions])
        # Its own process: the model and its HTTP server then take no GIL time from the
        # engine and the Lambdas, which share this one (~42% of it when in process).
        pinned = self.model_version is not None or self.model_tar is not None
        if self.endpoint_url is None and not pinned and (self.reuse_endpoint
                                                         or self.keep_endpoint_s):
            from scones.local.endpoint.background import find_running, start_background

            running = find_running(config) if self.reuse_endpoint else None
            if running is not None and self.progress:
                print(f"using the running endpoint at {running.url} ({running.owner}, pid "
                      f"{running.pid})", file=sys.stderr, flush=True)
            if running is None and self.keep_endpoint_s:
                running = start_background(config, self.keep_endpoint_s, self.progress)
            if running is not None:
                self.endpoint_url = running.url
        if self.endpoint_url is None:
            from scones.local.endpoint import EndpointProcess

            self.endpoint = self._stack.enter_context(EndpointProcess(
                config, model_version=self.model_version, model_tar=self.model_tar))
            self.endpoint_url = self.endpoint.url
        aws = self.aws = self._stack.enter_context(local_aws(region, self.endpoint_url))
        deploy = DirectDeploy(region)
        lambda_role = _create_role(deploy, config.aws.lambda_role_arn, "lambda")
        states_role = _create_role(deploy, config.aws.states_role_arn, "states")
        for function in functions:
            deploy.create_function(
                FunctionName=function.name, Runtime=LAMBDA_RUNTIME, Role=lambda_role,
                Handler=function.handler, Code={"ZipFile": zips[function.key].read_bytes()},
                Timeout=function.timeout, MemorySize=function.memory_size,
                Environment={"Variables": function.environment})
        aws.lambdas.pin_environment([f.environment for f in functions])
        # boto3 clients are made on first use only: each loads its service model.
        self.sfn = _LazyClient("stepfunctions", region)
        self._executions = DirectExecutions(self.sfn, region)
        self.s3 = _LazyClient("s3", region)
        self._staging = DirectStaging(self.s3, region)
        self.state_machine_arn = deploy.create_state_machine(
            config.workflow.state_machine_name, definition, states_role)
        if self.bulk:
            from workflow.bulk import bulk_definition_json, bulk_state_machine_name

            self.bulk_state_machine_arn = deploy.create_state_machine(
                bulk_state_machine_name(config), bulk_definition_json(config), states_role)

    def run_bulk(self, prefix_url: str, batch_size: int | None = None,
                 tolerated_failure_percentage: float | None = None,
                 concurrency: int | None = None, progress: bool = True):
        """One execution of the bulk state machine over every object under prefix_url
        (objects of the local object store, put into moto's S3 first): a BulkRun."""
        from workflow.bulk import run_bulk_execution, stage_prefix

        if not self.bulk:
            raise SconesError("this LocalWorkflow was started without bulk=True")
        stage_prefix(self.config, prefix_url, self._staging)
        self._staging.create_bucket(Bucket=self.config.aws.bucket)
        run = run_bulk_execution(
            self.config, self._executions, self.bulk_state_machine_arn, self.s3, prefix_url,
            batch_size=batch_size, tolerated_failure_percentage=tolerated_failure_percentage,
            concurrency=concurrency, progress=progress, poll_interval=LOCAL_POLL_INTERVAL_S,
            ended=self.aws.ended_executions)
        self._keep_bulk_results(run)
        return run

    def _keep_bulk_results(self, run) -> None:
        """The run's manifest, results and summary, from moto's S3 (gone when the run
        ends) into the workspace's object store, at the same s3:// URLs as on AWS."""
        if not run.results_url:
            return
        store = backend_for(self.config).object_store()
        bucket, prefix = split_s3_url(run.results_url)
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                       Prefix=prefix):
            for item in page.get("Contents", []):
                body = self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                store.write_bytes(f"s3://{bucket}/{item['Key']}", body)

    def run(self, images: Sequence[ImageSource], concurrency: int | None = None,
            progress: bool = True) -> list[ImageResult]:
        run_id = uuid.uuid4().hex[:12]
        located = stage_images(self.config, images, self._staging, run_id, read_s3_locally=True)
        return run_executions(
            self._executions, self.state_machine_arn, [execution_input(b, k) for b, k in located],
            [image.label for image in images], self.config.classes,
            concurrency=concurrency or self.config.workflow.max_concurrency,
            poll_interval=LOCAL_POLL_INTERVAL_S, progress=progress, run_id=run_id,
            ended=self.aws.ended_executions, give_up_after_s=LOCAL_GIVE_UP_AFTER_S)


def _create_role(deploy, arn: str | None, service: str) -> str:
    """The configured role, created in moto (Lambda refuses a role that does not exist)."""
    name = (arn or f"scones-local-{service}").rpartition("/")[2]
    return deploy.create_role(name, json.dumps(TRUST_POLICY))


class _LazyClient:
    """A boto3 client made at its first use."""

    def __init__(self, service: str, region: str):
        self._service, self._region, self._client = service, region, None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            import boto3
            self._client = boto3.client(self._service, region_name=self._region)
        return getattr(self._client, name)


# --------------------------------------------------------------------------- AWS

def run_workflow_on_aws(config: Config, images: list[ImageSource],
                        concurrency: int | None = None, progress: bool = True
                        ) -> list[ImageResult]:
    """Executions of the deployed state machine, one per image (local files are uploaded
    to s3://<aws.bucket>/workflow-input/<run>/ first)."""
    from workflow.definition import aws_partition

    backend = backend_for(config)
    machine_arn = (f"arn:{aws_partition(config.aws.region)}:states:"
                   f"{config.aws.region}:{backend.account_id}:stateMachine:"
                   f"{config.workflow.state_machine_name}")
    sfn = backend.client("stepfunctions")
    try:
        sfn.describe_state_machine(stateMachineArn=machine_arn)
    except sfn.exceptions.StateMachineDoesNotExist:
        raise SconesError(f"state machine {machine_arn} does not exist: deploy it with "
                          "`scones workflow deploy --env aws`") from None
    run_id = uuid.uuid4().hex[:12]
    located = stage_images(config, images, backend.client("s3"), run_id, read_s3_locally=False)
    return run_executions(sfn, machine_arn, [execution_input(b, k) for b, k in located],
                          [i.label for i in images], config.classes,
                          concurrency=concurrency or config.workflow.max_concurrency,
                          poll_interval=AWS_POLL_INTERVAL_S, progress=progress, run_id=run_id)


def summary(results: list[ImageResult]) -> str:
    """Per predicted class, met / not met; failures by error name; the failed images."""
    met = Counter(r.predicted_label for r in results if r.status == "SUCCEEDED")
    not_met = Counter(r.predicted_label for r in results if r.meets_threshold is False)
    failed = [r for r in results if r.failed_otherwise]
    labels = sorted(set(met) | set(not_met), key=str)
    lines = [f"{len(results)} image(s): {sum(met.values())} met the confidence threshold, "
             f"{sum(not_met.values())} below it, {len(failed)} failed", ""]
    if labels:
        lines += [format_table(["predicted label", "met", "not met"],
                               [[label, met[label], not_met[label]] for label in labels]), ""]
    if failed:
        errors = Counter(r.error or r.status for r in failed)
        lines += [format_table(["error", "images"], sorted(errors.items())), ""]
        lines += ["failed images:"]
        lines += [f"  {r.image}: {r.error or r.status}: {r.cause or ''}" for r in failed]
    return "\n".join(lines).rstrip()


CSV_COLUMNS = ("Image", "PredictedLabel", "Confidence", "Verdict", "Error")


def write_csv(results: Sequence[ImageResult], out) -> None:
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for result in results:
        row = result.to_dict()
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])


def run_workflow(config: Config, images: Sequence[ImageSource], model_version: int | None = None,
                 concurrency: int | None = None, progress: bool = True,
                 keep_endpoint_s: float | None = None) -> list[ImageResult]:
    """Classify images with the inference workflow of the config's backend: moto's engine
    and the local endpoint, or the deployed state machine on AWS.

    keep_endpoint_s (local): reuse the endpoint recorded as running, else leave one
    running in the background for that many idle seconds (0: reuse only)."""
    from workflow.stages import with_model_threshold

    backend = backend_for(config)
    if model_version is not None and backend.pick(local=False, aws=True):
        raise SconesError("--model-version chooses the local endpoint's model; on AWS the "
                          "endpoint serves the deployed version (`scones endpoint deploy`)")
    # the answering version's own threshold for the filter (the named one, else the
    # deployed one): the same decision as every other path makes
    config = with_model_threshold(config, backend, model_version)
    engine = backend.pick(local=run_workflow_locally, aws=run_workflow_on_aws)
    kwargs = backend.pick(local={"model_version": model_version,
                                 "keep_endpoint_s": keep_endpoint_s}, aws={})
    return engine(config, images, concurrency=concurrency, progress=progress, **kwargs)
