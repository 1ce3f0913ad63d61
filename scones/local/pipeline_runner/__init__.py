"""Run a SageMaker Pipeline definition on this machine: the embedded default.

The input is the JSON `pipeline.definition()` produces - the same document SageMaker would
run - never a re-implementation of our pipeline. Its parts, one seam each:

    plan.py       typed parameters; which steps, in what order (checked before anything runs)
    runner.py     the run loop: records, heartbeat, SIGTERM, caching, retry
    steps.py      the step executors (Processing, Training, RegisterModel, Condition, Fail)
    container.py  the /opt/ml paths and SM_* environment of a SageMaker job, and the job's
                  process (its own process group, never outliving the runner)
    transfer.py   inputs in (validated), outputs out, model.tar.gz
    cache.py      CacheConfig: cache keys, ExpireAfter
"""
from scones.local.pipeline_runner.plan import PlannedStep, plan, resolve_parameters
from scones.local.pipeline_runner.runner import (ExecutionNotRetryableError, ExecutionResult,
                                           ExecutionStopped, StepResult,
                                           retry_pipeline_locally, run_pipeline_locally)

__all__ = ["ExecutionNotRetryableError", "ExecutionResult", "ExecutionStopped", "PlannedStep",
           "StepResult", "plan", "resolve_parameters", "retry_pipeline_locally",
           "run_pipeline_locally"]
