"""Import the SageMaker and Step Functions SDKs quietly, the same way everywhere.

SDK v2 prints a deprecation banner, logs INFO lines about config files it did not find,
and sends telemetry; stepfunctions warns about pkg_resources. None of that belongs in
our CLI's output. Call `sagemaker_sdk()` / `stepfunctions_sdk()` instead of importing.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings

# Passed to every sagemaker Session we create: opts out of the SDK's telemetry.
SAGEMAKER_CONFIG = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}


def _quiet() -> None:
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    # Set before the import: the SDK only gives sagemaker.config its INFO level when unset.
    for name in ("sagemaker.config", "sagemaker", "sagemaker.telemetry", "botocore.credentials"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # stepfunctions' graph widgets log "IPython failed to import" at import time: we have
    # no notebook to draw in, so that is noise too.
    logging.getLogger("stepfunctions").setLevel(logging.ERROR)
    # Building a definition logs a WARNING per job-name field it pops and per parameter it
    # resolves at compile time: expected behaviour, not something a user can act on.
    logging.getLogger("sagemaker.workflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    warnings.filterwarnings("ignore", message="Running within a PipelineSession")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="sagemaker")


def pipeline_session(config, boto_session=None):
    """A PipelineSession on the configured region and bucket, with telemetry opted out."""
    sagemaker_sdk()
    import boto3
    from sagemaker.workflow.pipeline_context import PipelineSession

    boto_session = boto_session or boto3.Session(region_name=config.aws.region)
    return PipelineSession(boto_session=boto_session, default_bucket=config.aws.bucket,
                           sagemaker_config=SAGEMAKER_CONFIG)


def sagemaker_sdk():
    _quiet()
    import sagemaker

    return sagemaker


def stepfunctions_sdk():
    sagemaker_sdk()  # stepfunctions imports sagemaker
    with _root_logger_kept():
        import stepfunctions  # sets the root logger to ERROR on import
    return stepfunctions


@contextlib.contextmanager
def _root_logger_kept():
    """Undo what an SDK import does to the root logger: its level is the application's."""
    root = logging.getLogger()
    level = root.level
    try:
        yield
    finally:
        root.setLevel(level)
