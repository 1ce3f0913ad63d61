"""Errors users see. The CLI prints these as one line (`error: ...`), never a traceback.

They live in the core so that both backends (and the local twin behind the seam) raise the
same classes the layers above catch."""
import signal


class SconesError(Exception):
    """Base of every error meant for the user: the message says what and where."""


class StorageError(SconesError):
    """An object-store URL that is malformed, missing, or escapes the workspace."""


class RegistryError(SconesError):
    """A model-registry operation that cannot be done (unknown version, bad transition)."""


class PipelineExecutionError(SconesError):
    """The local runner cannot run a definition (unsupported step type, bad reference)."""


class ConfigError(SconesError):
    """A configuration file or override is wrong; the message names the key and file."""


class DeploymentError(SconesError):
    """A deployment that cannot be done: unapproved version, busy or failed endpoint..."""


class HealthCheckFailed(DeploymentError):
    """The new model did not load or answer: nothing was switched, the old one serves."""


class DeploymentRolledBack(DeploymentError):
    """The new model crossed the error-rate alarm while baking: the previous one is back."""


class ExecutionNotRetryableError(PipelineExecutionError):
    """RetryPipelineExecution refused: the execution is not Failed or Stopped, or unknown."""


# The pipeline execution statuses RetryPipelineExecution accepts (SageMaker's and the
# local runner's alike).
RETRYABLE_STATUSES = ("Failed", "Stopped")


class ExecutionStopped(KeyboardInterrupt):
    """The run was stopped (Ctrl-C or SIGTERM) and recorded Stopped. A KeyboardInterrupt, so
    callers that do not know it still end as an interrupted program does."""

    def __init__(self, execution_id: str, signal_number: int):
        super().__init__(f"execution {execution_id} stopped by "
                         f"{signal.Signals(signal_number).name}")
        self.execution_id = execution_id
        self.signal_number = signal_number
