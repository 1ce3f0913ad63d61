"""Who runs a pipeline definition: the local runner on this machine, or SageMaker Pipelines.

`pipeline_executor(backend)` hands out the one of the backend (`backend.pipeline_executor()`:
scones.local.pipeline_runner.pipelines_api or scones.sagemaker_pipelines) behind one front; both
take the same definition (`pipeline_definition(config)`, built by `factory`, default
pipelines.pipeline.get_pipeline) and parameters and answer in the same shape:

    {"ExecutionId", "ExecutionArn", "Status", "FailureReason", "ModelPackageVersion",
     "Steps": [{"Name", "Type", "Status", "Seconds", "FailureReason", "CacheHitResult"}]}

`.retry(execution_id)` is SageMaker's RetryPipelineExecution on both: the same execution
(id, definition, parameters) runs again from its failed step, reusing the steps that
succeeded. Parameters are range-checked (pipelines.parameters) before anything runs.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from pipelines.parameters import check_parameters
from pipelines.pipeline import get_pipeline
from scones.backend import Backend


class PipelineExecutor:
    """The backend's executor, with this project's pipeline and its parameter checks."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.config = backend.config
        self.executor = backend.pipeline_executor()

    def run(self, factory: Callable | None = None, parameters: Mapping[str, Any] | None = None,
            **options: Any) -> dict:
        """Run (locally: to its end) or start (on AWS; wait=True follows it) an execution
        of the pipeline `factory` builds (default: this project's)."""
        checked = check_parameters(self.config, parameters)
        return self.executor.run(factory or get_pipeline, parameters,
                                 input_url=checked.data.input_url, **options)

    def retry(self, execution_id: str, **options: Any) -> dict:
        return self.executor.retry(execution_id, **options)

    def stop(self, execution_id: str) -> bool:
        """StopPipelineExecution (locally: the runner records it Stopped); False if the
        execution is no longer running."""
        return self.executor.stop(execution_id)

    def executions(self, limit: int | None = None) -> list[dict]:
        return self.executor.executions(limit)


def pipeline_executor(backend: Backend) -> PipelineExecutor:
    """The executor of this backend: the local runner, or SageMaker Pipelines."""
    return PipelineExecutor(backend)
