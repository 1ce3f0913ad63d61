"""SageMaker Pipelines as a pipeline executor: what `scones.backend.AwsBackend.
pipeline_executor()` hands out (the local twin's counterpart is
scones.local.pipeline_runner.pipelines_api). It upserts the pipeline the factory builds, starts (and optionally follows) an
execution, retries one, lists them; answers in the shape pipelines.executors documents.
"""
from __future__ import annotations

import sys
import time
import uuid
from typing import Any, Callable, Mapping

from scones.errors import RETRYABLE_STATUSES, ExecutionNotRetryableError, SconesError


class SageMakerPipelineExecutor:
    """Upserts the pipeline on SageMaker and starts (and optionally follows) an execution."""

    poll_seconds = 30.0

    def __init__(self, backend: Any):
        self.backend = backend  # scones.backend.AwsBackend: its pipeline session and clients
        self.config = backend.config

    def run(self, factory: Callable, parameters: Mapping[str, Any] | None = None,
            wait: bool = False, progress: bool = True, description: str | None = None,
            tags: list[dict] | None = None, **_local_only: Any) -> dict:
        """Create or update the pipeline and start an execution; with wait=True follow it
        to its end, printing each step status change."""
        with self.backend.pipeline_session() as session:
            pipeline = factory(self.config, session)
        known = {p.name for p in pipeline.parameters}
        unknown = sorted(set(parameters or {}) - known)
        if unknown:
            raise SconesError(f"unknown pipeline parameter(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        pipeline.upsert(role_arn=self.config.aws.role_arn, description=description, tags=tags)
        execution = pipeline.start(parameters=dict(parameters or {}))
        return self._follow(pipeline.sagemaker_session.sagemaker_client, execution.arn, wait,
                            progress)

    def retry(self, execution_id: str, wait: bool = False, progress: bool = True) -> dict:
        """RetryPipelineExecution: SageMaker reruns the execution from its failed step
        (same ARN, same parameters); with wait=True follow it to its end."""
        client = self.backend.client("sagemaker")
        arn = self._execution_arn(client, execution_id)
        status = client.describe_pipeline_execution(
            PipelineExecutionArn=arn)["PipelineExecutionStatus"]
        if status not in RETRYABLE_STATUSES:
            raise ExecutionNotRetryableError(
                f"execution {execution_id} is {status}: only a Failed or Stopped execution can "
                "be retried")
        client.retry_pipeline_execution(PipelineExecutionArn=arn,
                                        ClientRequestToken=str(uuid.uuid4()))
        return self._follow(client, arn, wait, progress)

    def stop(self, execution_id: str) -> bool:
        """StopPipelineExecution; False if it is no longer Executing."""
        client = self.backend.client("sagemaker")
        arn = self._execution_arn(client, execution_id)
        status = client.describe_pipeline_execution(
            PipelineExecutionArn=arn)["PipelineExecutionStatus"]
        if status != "Executing":
            return False
        client.stop_pipeline_execution(PipelineExecutionArn=arn,
                                       ClientRequestToken=str(uuid.uuid4()))
        return True

    def _execution_arn(self, client, execution_id: str) -> str:
        if execution_id.startswith("arn:"):
            return execution_id
        pages = client.get_paginator("list_pipeline_executions").paginate(
            PipelineName=self.config.pipeline.name)
        for page in pages:
            for summary in page["PipelineExecutionSummaries"]:
                if summary["PipelineExecutionArn"].rpartition("/")[2] == execution_id:
                    return summary["PipelineExecutionArn"]
        raise ExecutionNotRetryableError(
            f"no execution {execution_id!r} of pipeline {self.config.pipeline.name} (list "
            "them: scones pipeline executions --env aws)")

    def _follow(self, client, arn: str, wait: bool, progress: bool) -> dict:
        seen: dict[str, str] = {}
        while True:
            described = client.describe_pipeline_execution(PipelineExecutionArn=arn)
            status = described["PipelineExecutionStatus"]
            steps = _execution_steps(client, arn)
            for step in steps:
                if progress and seen.get(step["Name"]) != step["Status"]:
                    _print_step(step)
                seen[step["Name"]] = step["Status"]
            if not wait or status not in ("Executing", "Stopping"):
                return {"ExecutionId": arn.rpartition("/")[2], "ExecutionArn": arn,
                        "Status": status, "Steps": steps,
                        "FailureReason": described.get("FailureReason"),
                        "ModelPackageVersion": _registered_version(steps)}
            time.sleep(self.poll_seconds)

    def executions(self, limit: int | None = None) -> list[dict]:
        client = self.backend.client("sagemaker")
        summaries = client.list_pipeline_executions(
            PipelineName=self.config.pipeline.name, SortBy="CreationTime",
            SortOrder="Descending", MaxResults=min(max(limit or 20, 1), 100)
        )["PipelineExecutionSummaries"]
        return [{"ExecutionId": s["PipelineExecutionArn"].rpartition("/")[2],
                 "ExecutionArn": s["PipelineExecutionArn"],
                 "Status": s["PipelineExecutionStatus"],
                 "StartTime": s.get("StartTime"),
                 "FailureReason": s.get("PipelineExecutionFailureReason"),
                 "Steps": _execution_steps(client, s["PipelineExecutionArn"])}
                for s in summaries]


def _registered_version(steps: list[dict]) -> int | None:
    for step in steps:
        if step.get("ModelPackageVersion") is not None:
            return step["ModelPackageVersion"]
    return None


def _execution_steps(client, arn: str) -> list[dict]:
    steps = []
    try:
        pages = client.get_paginator("list_pipeline_execution_steps").paginate(
            PipelineExecutionArn=arn, SortOrder="Ascending")
        for page in pages:
            for step in page["PipelineExecutionSteps"]:
                start, end = step.get("StartTime"), step.get("EndTime")
                package_arn = (step.get("Metadata", {}).get("RegisterModel") or {}).get("Arn")
                steps.append({
                    "Name": step["StepName"], "Type": step.get("StepType"),
                    "Status": step["StepStatus"],
                    "Seconds": round((end - start).total_seconds(), 1) if start and end else None,
                    "FailureReason": step.get("FailureReason"),
                    "CacheHitResult": step.get("CacheHitResult"),
                    "ModelPackageVersion": (int(package_arn.rpartition("/")[2])
                                            if package_arn else None),
                })
    except client.exceptions.ClientError as exc:
        # moto (the test double) does not implement this call; SageMaker does.
        if exc.response["Error"]["Code"] not in ("NotImplemented", "InvalidAction"):
            raise
    except NotImplementedError:
        pass
    return steps


def _print_step(step: dict) -> None:
    seconds = f" ({step['Seconds']} s)" if step.get("Seconds") is not None else ""
    print(f"  {step['Name']:<28} {step['Status']}{seconds}", file=sys.stderr)
