"""Run the inference workflow on images, with the same code on both backends.

The backend's workflow runtime (scones.backend.workflow_runtime) has the state machine ready:
on the embedded default the SAME definition that goes to AWS (workflow.definition) and the
SAME Lambda zips deployed into moto's engine, the local endpoint serving; on AWS the deployed
one. `Workflow` asks for it; `run_executions` and `result_from_execution` speak only the Step
Functions API. One execution per image, a bounded number at a time.
"""
from __future__ import annotations

import csv
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from lambdas.errors import ThresholdConfidenceNotMet
from scones.backend import StateMachine, backend_for
from scones.config import Config
from scones.console import format_table, progress_bar
from scones.errors import SconesError
from scones.storage import split_s3_url
from workflow.definition import (CLASSIFY_STATE, NOT_A_VEHICLE_ERROR, THRESHOLD_ERROR,
                                 lambda_functions, workflow_definition_json)
from workflow.stages import with_model_threshold

INPUT_PREFIX = "workflow-input"  # where local image files are put in S3 for a run
MAX_EXECUTION_NAME = 80


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


def stage_image(config: Config, source: ImageSource, index: int, runtime, run_id: str
                ) -> tuple[str, str, bool]:
    """(bucket, key) of one image in the S3 the workflow reads, and whether it was put
    there for this execution alone: a local file is put under
    s3://<aws.bucket>/workflow-input/<run>/; an s3:// object keeps its bucket and key (the
    runtime brings it over from the object store where the workflow's S3 is not it)."""
    if source.path is not None:
        bucket = config.aws.bucket
        key = f"{INPUT_PREFIX}/{run_id}/{index:05d}-{source.path.name}"
        runtime.ensure_bucket(bucket)
        runtime.staging.put_object(Bucket=bucket, Key=key, Body=source.path.read_bytes())
        return bucket, key, True
    bucket, key = split_s3_url(source.s3_url)
    runtime.import_object(source.s3_url)
    return bucket, key, False


def stage_images(config: Config, images: Sequence[ImageSource], runtime, run_id: str
                 ) -> list[tuple[str, str]]:
    """(bucket, key) of each image (stage_image), all at once."""
    return [stage_image(config, source, index, runtime, run_id)[:2]
            for index, source in enumerate(images)]


# --------------------------------------------------------------------------- executions


def execution_input(bucket: str, key: str, endpoint_name: str | None = None) -> str:
    """The workflow's input event (lambdas/events.py); endpoint_name: the endpoint the
    classify Lambda is to call instead of its own (prod), from its allow-list."""
    event = {"s3_bucket": bucket, "s3_key": key, "image_data": "", "inferences": []}
    if endpoint_name:
        event["endpoint_name"] = endpoint_name
    return json.dumps(event)


def run_executions(sfn_client, state_machine_arn: str, inputs: Sequence[str], labels: Sequence[str],
                   classes: Sequence[str], concurrency: int, poll_interval: float,
                   progress: bool, run_id: str | None = None,
                   ended: Callable[[float], list[str]] | None = None,
                   give_up_after_s: float | None = None) -> list[ImageResult]:
    """Every result of iter_executions, in input order."""
    return list(iter_executions(
        sfn_client, state_machine_arn, inputs.__getitem__, labels, classes, concurrency,
        poll_interval, progress, run_id=run_id, ended=ended, give_up_after_s=give_up_after_s))


def iter_executions(sfn_client, state_machine_arn: str, input_for: Callable[[int], str],
                    labels: Sequence[str], classes: Sequence[str], concurrency: int,
                    poll_interval: float, progress: bool, run_id: str | None = None,
                    ended: Callable[[float], list[str]] | None = None,
                    give_up_after_s: float | None = None,
                    release: Callable[[str, int], None] | None = None
                    ) -> Iterator[ImageResult]:
    """Start one execution per label, at most `concurrency` running at once; poll each to
    its end; yield the results in input order as soon as each and those before it are read.

    input_for(index): the execution's input, asked for just before it starts (so an image
    is staged only then). release(arn, index): called once an execution's result is read
    (the local engine then forgets it), so memory holds about `concurrency` executions
    whatever the number of images.
    ended(timeout): when the engine can say which executions ended (the local one can),
    only those are described; if it reports none within poll_interval, all are checked.
    give_up_after_s: an execution still RUNNING after this long is reported as failed
    (EngineStalled) instead of waiting forever on an engine that lost it.
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    total = len(labels)
    waiting: dict[int, ImageResult] = {}  # read, not yet yielded (an earlier one runs)
    next_to_yield = 0
    running: dict[str, int] = {}  # execution ARN -> index
    started: dict[str, float] = {}
    next_index = done = 0
    if progress:
        progress_bar(0, total, label="classifying ")
    while done < total:
        while next_index < total and len(running) < max(1, concurrency):
            name = f"{run_id}-{next_index:05d}"[:MAX_EXECUTION_NAME]
            arn = sfn_client.start_execution(stateMachineArn=state_machine_arn, name=name,
                                             input=input_for(next_index))["executionArn"]
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
                waiting[index] = result_from_execution(
                    labels[index], description, classes,
                    history=lambda arn=arn: _history(sfn_client, arn))
                finished.append(arn)
                if release is not None:
                    release(arn, index)
        for arn in finished:
            del running[arn]
            del started[arn]
        done += len(finished)
        if finished and progress:
            progress_bar(done, total, label="classifying ")
        while next_to_yield in waiting:
            yield waiting.pop(next_to_yield)
            next_to_yield += 1
        if not finished and ended is None:
            time.sleep(poll_interval)


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
        result.cause = readable_cause(result.cause)
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


def readable_cause(cause: str) -> str:
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


# --------------------------------------------------------------------------- running


class Workflow:
    """The inference workflow ready to run on the config's backend, set up once and run
    many times (`with Workflow(config) as wf: wf.run(images)`).

    model_version / model_tar pin the model the local endpoint serves (default: the
    deployed one, see scones.local.endpoint; refused on AWS, whose endpoint serves the
    deployed version); endpoint_url: a running endpoint to use instead of starting one.
    Unpinned runs may use the endpoint recorded as running (reuse_endpoint), or leave one
    running in the background for keep_endpoint_s idle seconds. model_threshold: the
    filter's threshold is the one registered with the answering version
    (workflow.stages.with_model_threshold), decided after the backend has accepted the
    rest, before anything is deployed."""

    def __init__(self, config: Config, model_version: int | None = None,
                 model_tar: Path | None = None, endpoint_url: str | None = None,
                 reuse_endpoint: bool = False, keep_endpoint_s: float | None = None,
                 progress: bool = False, model_threshold: bool = False):
        self.config = config
        backend = backend_for(config)
        # machines' definitions and the functions are made when deployed, from self.config
        self.runtime = backend.workflow_runtime(
            self.machines(), self.functions, model_version=model_version,
            model_tar=model_tar, endpoint_url=endpoint_url, reuse_endpoint=reuse_endpoint,
            keep_endpoint_s=keep_endpoint_s, progress=progress)
        if model_threshold:
            self.config = with_model_threshold(config, backend, model_version)

    def machines(self) -> list[StateMachine]:
        return [StateMachine(self.config.workflow.state_machine_name,
                             lambda: workflow_definition_json(self.config),
                             "deploy it with `scones workflow deploy --env aws`")]

    def functions(self) -> list:
        return [f for f in lambda_functions(self.config).values() if f.in_workflow]

    def __enter__(self) -> "Workflow":
        self.runtime.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runtime.__exit__(*exc)

    def run(self, images: Sequence[ImageSource], concurrency: int | None = None,
            progress: bool = True, endpoint_name: str | None = None) -> list[ImageResult]:
        return list(self.iter_run(images, concurrency=concurrency, progress=progress,
                                  endpoint_name=endpoint_name))

    def iter_run(self, images: Sequence[ImageSource], concurrency: int | None = None,
                 progress: bool = True, endpoint_name: str | None = None
                 ) -> Iterator[ImageResult]:
        """The results in input order, as they come: each image is staged just before its
        execution starts, and the execution and the input staged for it are released once
        its result is read, so memory stays flat in the number of images."""
        runtime = self.runtime
        run_id = uuid.uuid4().hex[:12]
        staged: dict[int, tuple[str, str]] = {}  # index -> what was put for it alone

        def input_for(index: int) -> str:
            bucket, key, own = stage_image(self.config, images[index], index, runtime, run_id)
            if own:
                staged[index] = (bucket, key)
            return execution_input(bucket, key, endpoint_name)

        return iter_executions(
            runtime.stepfunctions, runtime.state_machine_arn(self.config.workflow.state_machine_name),
            input_for, [image.label for image in images], self.config.classes,
            concurrency=concurrency or self.config.workflow.max_concurrency,
            poll_interval=runtime.poll_interval, progress=progress, run_id=run_id,
            ended=runtime.ended, give_up_after_s=runtime.give_up_after_s,
            release=lambda arn, index: runtime.release(arn, staged.pop(index, None)))


def run_images(config: Config, images: Sequence[ImageSource],
               model_version: int | None = None, concurrency: int | None = None,
               progress: bool = True, model_tar: Path | None = None,
               keep_endpoint_s: float | None = None,
               model_threshold: bool = False, endpoint_name: str | None = None
               ) -> list[ImageResult]:
    """Classify each image with one execution of the inference workflow; the confidence
    threshold as configured, or (model_threshold) the answering version's."""
    return list(iter_images(config, images, model_version=model_version,
                            concurrency=concurrency, progress=progress, model_tar=model_tar,
                            keep_endpoint_s=keep_endpoint_s, model_threshold=model_threshold,
                            endpoint_name=endpoint_name))


def iter_images(config: Config, images: Sequence[ImageSource],
                model_version: int | None = None, concurrency: int | None = None,
                progress: bool = True, model_tar: Path | None = None,
                keep_endpoint_s: float | None = None,
                model_threshold: bool = False, bar: bool | None = None,
                endpoint_name: str | None = None) -> Iterator[ImageResult]:
    """run_images's results in input order as they come (the workflow is set up on the
    first next() and taken down when the iterator ends or is closed). bar: draw the
    progress bar (default: as progress; a caller printing each result on the terminal
    the bar is drawn on turns it off)."""
    if not images:
        raise SconesError("no images to classify")
    with Workflow(config, model_version=model_version, model_tar=model_tar,
                  reuse_endpoint=keep_endpoint_s is not None,
                  keep_endpoint_s=keep_endpoint_s or None, progress=progress,
                  model_threshold=model_threshold) as workflow:
        yield from workflow.iter_run(images, concurrency=concurrency,
                                     progress=progress if bar is None else bar,
                                     endpoint_name=endpoint_name)


class Tally:
    """What summary() says, counted as results come (only the failed ones are kept)."""

    def __init__(self) -> None:
        self.images = 0
        self.met: Counter = Counter()
        self.not_met: Counter = Counter()
        self.failed: list[ImageResult] = []

    def add(self, result: ImageResult) -> ImageResult:
        self.images += 1
        if result.status == "SUCCEEDED":
            self.met[result.predicted_label] += 1
        if result.meets_threshold is False:
            self.not_met[result.predicted_label] += 1
        if result.failed_otherwise:
            self.failed.append(result)
        return result

    def text(self) -> str:
        met, not_met, failed = self.met, self.not_met, self.failed
        labels = sorted(set(met) | set(not_met), key=str)
        lines = [f"{self.images} image(s): {sum(met.values())} met the confidence threshold, "
                 f"{sum(not_met.values())} below it, {len(failed)} failed", ""]
        if labels:
            lines += [format_table(["predicted label", "met", "not met"],
                                   [[label, met[label], not_met[label]] for label in labels]),
                      ""]
        if failed:
            errors = Counter(r.error or r.status for r in failed)
            lines += [format_table(["error", "images"], sorted(errors.items())), ""]
            lines += ["failed images:"]
            lines += [f"  {r.image}: {r.error or r.status}: {r.cause or ''}" for r in failed]
        return "\n".join(lines).rstrip()


def summary(results: Iterable[ImageResult]) -> str:
    """Per predicted class, met / not met; failures by error name; the failed images."""
    tally = Tally()
    for result in results:
        tally.add(result)
    return tally.text()


CSV_COLUMNS = ("Image", "PredictedLabel", "Confidence", "Verdict", "Error")


def write_csv(results: Iterable[ImageResult], out) -> None:
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for result in results:
        row = result.to_dict()
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])


def run_workflow(config: Config, images: Sequence[ImageSource], model_version: int | None = None,
                 concurrency: int | None = None, progress: bool = True,
                 keep_endpoint_s: float | None = None,
                 endpoint_name: str | None = None) -> list[ImageResult]:
    """Every result of iter_workflow, in input order."""
    return list(iter_workflow(config, images, model_version=model_version,
                              concurrency=concurrency, progress=progress,
                              keep_endpoint_s=keep_endpoint_s, endpoint_name=endpoint_name))


def iter_workflow(config: Config, images: Sequence[ImageSource],
                  model_version: int | None = None, concurrency: int | None = None,
                  progress: bool = True, keep_endpoint_s: float | None = None,
                  bar: bool | None = None, endpoint_name: str | None = None
                  ) -> Iterator[ImageResult]:
    """Classify images with the inference workflow of the config's backend: moto's engine
    and the local endpoint, or the deployed state machine on AWS; the threshold is the one
    of the version the endpoint serves (when model_version does not pin another). The
    results in input order as they come (a caller that writes each one keeps memory flat).

    keep_endpoint_s (local): reuse the endpoint recorded as running, else leave one
    running in the background for that many idle seconds (0: reuse only). endpoint_name:
    the endpoint the executions ask the classify Lambda for (the staging test's)."""
    return iter_images(config, images, model_version=model_version, concurrency=concurrency,
                       progress=progress, keep_endpoint_s=keep_endpoint_s,
                       model_threshold=True, bar=bar, endpoint_name=endpoint_name)
