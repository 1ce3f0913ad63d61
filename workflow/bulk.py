"""The bulk inference workflow: every image under an S3 prefix, in batches, on Step
Functions' distributed engine, built with the Step Functions SDK.

    PlanBatches (Lambda)  lists the prefix, writes the batches as a JSON manifest
    ClassifyBatches (Map, Mode DISTRIBUTED, ExecutionType STANDARD)
        ItemReader   s3:getObject of the manifest (InputType JSON): one item per batch
        child        ClassifyBatch (Lambda: serialize -> classify -> filter on the whole
                     batch, one endpoint request per batch, one JSON line per image)
                     -Catch-> RecordBatchFailure (same Lambda: the batch's error on each
                     of its images) -> BatchFailed (Fail: the child counts as failed)
        ToleratedFailurePercentagePath, MaxConcurrencyPath (from the run's input)
        ResultWriter s3:putObject under the run's results prefix
        -Catch-> Summarize (the Map's own threshold error, on AWS)
    Summarize (Lambda)    counts the batches' JSON Lines, writes summary.json, decides
                          the threshold -> ToleratedFailureThresholdExceeded (Fail) | Done

Why batches planned into a manifest, not ItemBatcher: AWS batches a Map's items with
ItemBatcher, but moto's interpreter (the local engine) has no ItemBatcher; it does have
ItemReader, ResultWriter and ToleratedFailure*. A manifest whose items ARE batches gives
the same batching from the same ASL on both: AWS's Distributed Map reads it with
ItemReader as moto does, and no local-only state exists. Planning in a Lambda (not on the
client) keeps `scones workflow run --prefix` to one StartExecution on AWS, whatever the
prefix holds.

Why a batch-aware Lambda rather than the three per-image Lambdas in an inline loop: the
cost to amortise is per invocation and per state (AWS: Lambda requests, Express duration;
locally: ~8 ms of engine CPU per state), and the endpoint's per-request cost. Base64
images of a batch would not fit a state's 256 KiB either, so the bytes stay in the Lambda
and only counts come back; the chain's rules and error names are the per-image Lambdas'
own (lambdas/classify_image_batch.py).

Results: our own JSON Lines, one object per batch (ResultWriter is kept for AWS, where the
Map's output would otherwise exceed 256 KiB for large runs; moto writes only an empty
manifest there). moto does not enforce ToleratedFailurePercentage: Summarize applies the
same threshold, so a run ends the same way on both (see lambdas/summarize_bulk_run.py).
"""
from __future__ import annotations

import functools
import json
import sys
import time
import uuid
from dataclasses import dataclass

from lambdas.plan_image_batches import MANIFEST_NAME
from lambdas.summarize_bulk_run import SUMMARY_NAME
from scones.backend import StateMachine
from scones.config import Config
from scones.console import progress_bar
from scones.errors import SconesError
from scones.sdk import stepfunctions_sdk
from scones.storage import split_s3_url
from workflow.definition import (THROTTLED_ERROR, aws_partition, cached_definition,
                                 check_definition, fail_with_caught_error, lambda_functions,
                                 lambda_task_state)
from workflow.run import ImageResult, Workflow, readable_cause

PLAN_STATE = "PlanBatches"
MAP_STATE = "ClassifyBatches"
BATCH_STATE = "ClassifyBatch"
RECORD_FAILURE_STATE = "RecordBatchFailure"
BATCH_FAILED_STATE = "BatchFailed"
SUMMARIZE_STATE = "Summarize"
CHECK_THRESHOLD_STATE = "IsThresholdExceeded"
THRESHOLD_FAIL_STATE = "ToleratedFailureThresholdExceeded"
DONE_STATE = "Done"
THRESHOLD_EXCEEDED_ERROR = "ToleratedFailureThresholdExceeded"

DEFAULT_BATCH_SIZE = 256          # images per request
DEFAULT_TOLERATED_FAILURE_PERCENTAGE = 5.0
RESULTS_PREFIX = "bulk-runs"      # s3://<aws.bucket>/bulk-runs/<run id>/
MAP_LABEL = "batches"


def bulk_state_machine_name(config: Config) -> str:
    return f"{config.workflow.state_machine_name}-bulk"


def _distributed_map_class(sdk_steps):
    # lazily, as every use of the Step Functions SDK: it takes about a second to import
    from stepfunctions.steps.states import Graph as _Graph, State as _State

    class DistributedMap(sdk_steps.Map):
        """The SDK's Map knows only the inline Iterator; this writes a Distributed Map:
        ItemProcessor with ProcessorConfig, ItemReader, ResultWriter, Label and the
        tolerated-failure and concurrency paths."""

        def __init__(self, state_id: str, processor, extra: dict, **kwargs):
            super().__init__(state_id, **kwargs)
            self.processor = processor
            self.extra = extra

        def to_dict(self):
            result = _State.to_dict(self)   # not Map's: it would add Iterator
            graph = _Graph(self.processor).to_dict()
            result["ItemProcessor"] = {
                # STANDARD children: an EXPRESS child is killed at 5 minutes, which a batch
                # (Lambda up to 300 s, its retries, then RecordBatchFailure) can outlast
                "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                **graph}
            result.update(self.extra)
            return result

        def accept(self, visitor):
            # The processor is a graph of its own: the outer graph must not absorb its states.
            _State.accept(self, visitor)

    return DistributedMap


def build_bulk_workflow(config: Config, client=None):
    """The bulk workflow as a stepfunctions.workflow.Workflow (see the module doc)."""
    stepfunctions_sdk()
    # lazily: the Step Functions SDK takes about a second to import
    from stepfunctions import steps
    from stepfunctions.workflow import Workflow as SdkWorkflow

    functions = lambda_functions(config)
    partition = aws_partition(config.aws.region)
    plan = lambda_task_state(steps, config, functions["plan_image_batches"], PLAN_STATE,
                             "List the prefix into a manifest of batches")
    classify = lambda_task_state(
        steps, config, functions["classify_image_batch"], BATCH_STATE,
        "Serialize, classify and filter the batch; one JSON line per image")
    classify.add_retry(steps.Retry(error_equals=[THROTTLED_ERROR], interval_seconds=2,
                                   max_attempts=4, backoff_rate=2.0))
    record = lambda_task_state(
        steps, config, functions["classify_image_batch"], RECORD_FAILURE_STATE,
        "Record the batch's error as each of its images' result")
    batch_failed = fail_with_caught_error(
        steps, BATCH_FAILED_STATE, None,
        "The batch failed as a whole: the Map counts it against the tolerated failures")
    classify.add_catch(steps.Catch(error_equals=["States.ALL"], next_step=record,
                                   result_path="$.failure"))
    record.next(batch_failed)

    summarize = lambda_task_state(
        steps, config, functions["summarize_bulk_run"], SUMMARIZE_STATE,
        "Count the results, write summary.json, decide the tolerated-failure threshold")
    distributed = _distributed_map_class(steps)(
        MAP_STATE, classify,
        extra={
            "ItemReader": {
                "Resource": f"arn:{partition}:states:::s3:getObject",
                "ReaderConfig": {"InputType": "JSON"},
                "Parameters": {"Bucket.$": "$.manifest.bucket", "Key.$": "$.manifest.key"}},
            "MaxConcurrencyPath": "$.max_concurrency",
            "ToleratedFailurePercentagePath": "$.tolerated_failure_percentage",
            "Label": MAP_LABEL,
            "ResultWriter": {
                "Resource": f"arn:{partition}:states:::s3:putObject",
                # From the execution's input: moto evaluates these against the Map's
                # results, not its input; the context object means the same in both.
                "Parameters": {"Bucket.$": "$$.Execution.Input.results.bucket",
                               "Prefix.$": "$$.Execution.Input.results.prefix"}},
        },
        comment="One child execution per batch of the manifest",
        result_path="$.map_run")
    distributed.add_catch(steps.Catch(error_equals=["States.ALL"], next_step=summarize,
                                      result_path="$.map_error"))
    distributed.next(summarize)

    class FailWithCause(steps.Fail):
        """The SDK's Fail knows only a static Cause; the summary's Cause says how many
        batches failed and where the results are."""

        def to_dict(self):
            result = super().to_dict()
            result["CausePath"] = "$.Cause"
            return result

    threshold_failed = FailWithCause(
        THRESHOLD_FAIL_STATE, error=THRESHOLD_EXCEEDED_ERROR,
        comment="More batches failed than the run tolerates; the results are still written")
    done = steps.Succeed(DONE_STATE, comment="Every batch ran or was tolerated")
    check = steps.Choice(CHECK_THRESHOLD_STATE)
    check.add_choice(steps.ChoiceRule.BooleanEquals(variable="$.threshold_exceeded", value=True),
                     next_step=threshold_failed)
    check.default_choice(done)
    summarize.next(check)

    if client is None:
        import boto3
        client = boto3.client("stepfunctions", region_name=config.aws.region)
    return SdkWorkflow(
        name=bulk_state_machine_name(config),
        definition=steps.Chain([plan, distributed]),
        role=config.aws.states_role_arn or "",
        comment="Scones Unlimited: classify every image under an S3 prefix, in batches",
        timeout_seconds=24 * 3600,
        client=client,
    )


@functools.lru_cache(maxsize=32)
def bulk_definition_json(config: Config) -> str:
    """The bulk ASL exactly as deployed, checked first."""
    text = cached_definition(
        config, "bulk", lambda: build_bulk_workflow(config).definition.to_json(pretty=True))
    check_definition(json.loads(text), "bulk state machine definition")
    return text


def bulk_input(config: Config, bucket: str, prefix: str, run_id: str,
               batch_size: int = DEFAULT_BATCH_SIZE,
               tolerated_failure_percentage: float = DEFAULT_TOLERATED_FAILURE_PERCENTAGE,
               max_concurrency: int | None = None) -> dict:
    """The bulk execution's input (checked again by the plan Lambda)."""
    return {"bucket": bucket, "prefix": prefix, "batch_size": batch_size,
            "tolerated_failure_percentage": tolerated_failure_percentage,
            "max_concurrency": max_concurrency or config.workflow.max_concurrency,
            "results": {"bucket": config.aws.bucket, "prefix": f"{RESULTS_PREFIX}/{run_id}"}}


@dataclass
class BulkRun:
    """A finished bulk execution: its status, summary and every image's result."""

    run_id: str
    status: str
    summary: dict | None
    results: list          # workflow.run.ImageResult, in listing order
    error: str | None = None
    cause: str | None = None
    results_url: str | None = None


def image_result_from_line(line: dict) -> ImageResult:
    return ImageResult(image=line["Image"], status=line["Status"],
                       predicted_label=line.get("PredictedLabel"),
                       inferences=line.get("Inferences"),
                       meets_threshold=line.get("MeetsThreshold"), error=line.get("Error"),
                       cause=line.get("Cause"), seconds=None)


def collect_results(read_bytes, manifest: list[dict]) -> list:
    """Every image of the manifest's batches, once, in order: the batch's JSON line, or
    NotRun when its batch wrote nothing. read_bytes(bucket, key) -> bytes | None."""
    results = []
    for batch in manifest:
        body = read_bytes(batch["results"]["bucket"], batch["results"]["key"])
        if body is None:
            results += [ImageResult(
                image=f"s3://{batch['bucket']}/{key}", status="FAILED", predicted_label=None,
                inferences=None, meets_threshold=None, error="NotRun",
                cause=f"batch {batch['batch']} did not run: the bulk run stopped first",
                seconds=None) for key in batch["keys"]]
            continue
        lines = [json.loads(text) for text in body.decode("utf-8").splitlines() if text.strip()]
        results += [image_result_from_line(line) for line in lines]
    return results


def bulk_run_from_execution(run_id: str, description: dict, read_bytes,
                            results_bucket: str, results_prefix: str) -> BulkRun:
    """Summary and results of an ended bulk execution (read through read_bytes)."""
    status = description["status"]
    summary_bytes = read_bytes(results_bucket, f"{results_prefix}/{SUMMARY_NAME}")
    summary = json.loads(summary_bytes) if summary_bytes else None
    manifest_bytes = read_bytes(results_bucket, f"{results_prefix}/{MANIFEST_NAME}")
    results = collect_results(read_bytes, json.loads(manifest_bytes)) if manifest_bytes else []
    cause = description.get("cause")
    return BulkRun(run_id=run_id, status=status, summary=summary, results=results,
                   error=description.get("error"),
                   cause=readable_cause(cause) if cause else None,
                   results_url=f"s3://{results_bucket}/{results_prefix}/")


def bulk_summary_lines(run: BulkRun) -> list[str]:
    """What a person reads after a bulk run, besides summary(results)."""
    lines = []
    if run.summary:
        s = run.summary
        lines.append(f"bulk run {run.run_id}: {s['Batches']} batch(es), {s['FailedBatches']} "
                     f"failed, {s['NotRunBatches']} not run ({s['FailedBatchPercentage']:g}% "
                     f"of batches; tolerated {s['ToleratedFailurePercentage']:g}%)")
    if run.status != "SUCCEEDED":
        lines.append(f"bulk run {run.status}: {run.error or ''}: {run.cause or ''}")
    if run.results_url:
        lines.append(f"results: {run.results_url} (summary.json, results/batch-*.jsonl)")
    return lines


# --------------------------------------------------------------------------- running


def _reader(s3_client):
    def read_bytes(bucket: str, key: str) -> bytes | None:
        try:
            return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3_client.exceptions.NoSuchKey:
            return None
    return read_bytes


def _count_objects(s3_client, bucket: str, prefix: str) -> int:
    count, token = 0, None
    while True:
        page = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix,
                                         **({"ContinuationToken": token} if token else {}))
        count += page.get("KeyCount", 0)
        token = page.get("NextContinuationToken")
        if not token:
            return count


def run_bulk_execution(config: Config, sfn_client, machine_arn: str, s3_client, prefix_url: str,
                       batch_size: int | None = None,
                       tolerated_failure_percentage: float | None = None,
                       concurrency: int | None = None, progress: bool = True,
                       poll_interval: float = 1.0, ended=None) -> BulkRun:
    """Start one bulk execution over prefix_url, show the batches as they finish, and
    read back its summary and every image's result. Speaks only the Step Functions and
    S3 APIs: the same code drives moto's engine and AWS."""
    bucket, prefix = split_s3_url(prefix_url)
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    if not 1 <= batch_size <= 1000:
        raise SconesError(f"--batch-size must be from 1 to 1000, got {batch_size}")
    tolerated = (DEFAULT_TOLERATED_FAILURE_PERCENTAGE if tolerated_failure_percentage is None
                 else tolerated_failure_percentage)
    if not 0 <= tolerated <= 100:
        raise SconesError(f"--tolerated-failures must be a percentage from 0 to 100, got "
                          f"{tolerated}")
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    run_input = bulk_input(config, bucket, prefix, run_id, batch_size, tolerated, concurrency)
    results = run_input["results"]
    arn = sfn_client.start_execution(stateMachineArn=machine_arn, name=run_id,
                                     input=json.dumps(run_input))["executionArn"]

    batches_prefix = f"{results['prefix']}/results/"
    read_bytes = _reader(s3_client)
    done, total = -1, None
    if progress:
        print(f"bulk run {run_id}: planning batches of {batch_size} under {prefix_url}",
              file=sys.stderr)
    while True:
        if ended is not None:
            ended(poll_interval)
        else:
            time.sleep(poll_interval)
        description = sfn_client.describe_execution(executionArn=arn)
        if progress:
            if total is None:
                manifest = read_bytes(results["bucket"], f"{results['prefix']}/{MANIFEST_NAME}")
                total = len(json.loads(manifest)) if manifest else None
            written = _count_objects(s3_client, results["bucket"], batches_prefix)
            if total is not None and written != done:
                done = written
                progress_bar(done, total, label="batches ")
        if description["status"] != "RUNNING":
            break
    return bulk_run_from_execution(run_id, description, _reader(s3_client), results["bucket"],
                                   results["prefix"])


class BulkWorkflow(Workflow):
    """The inference workflow with its bulk state machine (and the bulk Lambdas) as well:
    `with BulkWorkflow(config) as wf: wf.run_bulk(prefix_url)`."""

    def machines(self) -> list[StateMachine]:
        return super().machines() + [StateMachine(
            bulk_state_machine_name(self.config), lambda: bulk_definition_json(self.config),
            "create the stack (`scones infra deploy --env aws`)")]

    def functions(self) -> list:
        return [f for f in lambda_functions(self.config).values() if f.in_workflow or f.in_bulk]

    def run_bulk(self, prefix_url: str, batch_size: int | None = None,
                 tolerated_failure_percentage: float | None = None,
                 concurrency: int | None = None, progress: bool = True) -> BulkRun:
        """One execution of the bulk state machine over every object under prefix_url (the
        object store's, brought to the workflow's S3 first where that is another)."""
        runtime = self.runtime
        if runtime.import_prefix(prefix_url) == 0:  # None: the workflow lists S3 itself
            raise SconesError(f"--prefix {prefix_url}: no objects under it")
        runtime.ensure_bucket(self.config.aws.bucket)
        run = run_bulk_execution(
            self.config, runtime.stepfunctions,
            runtime.state_machine_arn(bulk_state_machine_name(self.config)), runtime.s3,
            prefix_url, batch_size=batch_size,
            tolerated_failure_percentage=tolerated_failure_percentage,
            concurrency=concurrency, progress=progress,
            poll_interval=runtime.long_poll_interval, ended=runtime.ended)
        # the run's manifest, results and summary, where the object store has them
        if run.results_url:
            runtime.export_prefix(run.results_url)
        return run


def run_bulk(config: Config, prefix_url: str, batch_size: int | None = None,
             tolerated_failure_percentage: float | None = None,
             concurrency: int | None = None, model_version: int | None = None,
             progress: bool = True, keep_endpoint_s: float | None = None) -> BulkRun:
    """Every image under prefix_url through ONE execution of the bulk state machine: in
    moto's engine with the local endpoint, or the deployed one on AWS."""
    split_s3_url(prefix_url)  # a malformed URL is a StorageError naming it
    # the answering version's registered threshold, as one image or a folder gets it
    with BulkWorkflow(config, model_version=model_version,
                      reuse_endpoint=keep_endpoint_s is not None,
                      keep_endpoint_s=keep_endpoint_s or None, progress=progress,
                      model_threshold=True) as workflow:
        return workflow.run_bulk(prefix_url, batch_size=batch_size,
                                 tolerated_failure_percentage=tolerated_failure_percentage,
                                 concurrency=concurrency, progress=progress)
