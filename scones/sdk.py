"""Import the SageMaker and Step Functions SDKs quietly, the same way everywhere.

SDK v2 prints a deprecation banner, logs INFO lines about config files it did not find,
and sends telemetry; stepfunctions warns about pkg_resources. None of that belongs in
our CLI's output. Call `sagemaker_sdk()` / `stepfunctions_sdk()` instead of importing.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import warnings
from pathlib import Path

from scones.errors import SconesError

# Merged into the SDK defaults config every Session we create gets: opts out of telemetry.
TELEMETRY_OPT_OUT = {
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
    """A PipelineSession on the configured region and bucket, with the admin's SageMaker
    defaults (VPC, KMS keys, tags) and telemetry opted out."""
    sagemaker_sdk()
    import boto3
    from sagemaker.workflow.pipeline_context import PipelineSession

    boto_session = boto_session or boto3.Session(region_name=config.aws.region)
    return PipelineSession(boto_session=boto_session, default_bucket=config.aws.bucket,
                           sagemaker_config=sagemaker_defaults_config())


@functools.lru_cache(maxsize=1)
def sagemaker_defaults_config() -> dict:
    """The SDK defaults config a Session would load by itself - the admin's and the user's
    files (/etc/xdg/sagemaker/config.yaml, ~/.config/sagemaker/config.yaml, or the paths in
    SAGEMAKER_ADMIN_CONFIG_OVERRIDE / SAGEMAKER_USER_CONFIG_OVERRIDE: Studio domains put VPC
    subnets, KMS keys and tags there) - with TelemetryOptOut merged in.

    Passing a sagemaker_config to a Session replaces what it would load, so the opt-out has
    to be merged into the loaded config, not passed alone. Loaded and validated once per
    process: the SDK validates the whole config again on every lookup (59 lookups for one
    definition, two thirds of `scones pipeline definition`), so lookups in this one
    already-validated dict skip that (see _validate_once).
    """
    sagemaker_sdk()
    from sagemaker.config import load_sagemaker_config, validate_sagemaker_config

    try:
        loaded = load_sagemaker_config() or {}
        merged = _deep_merge(copy.deepcopy(loaded), TELEMETRY_OPT_OUT)
        validate_sagemaker_config(merged)
    except Exception as exc:  # the SDK raises ValueError, jsonschema's errors, botocore's
        overrides = {name: os.environ[name] for name in (
            "SAGEMAKER_ADMIN_CONFIG_OVERRIDE", "SAGEMAKER_USER_CONFIG_OVERRIDE")
            if name in os.environ}
        where = ", ".join(f"{k}={v}" for k, v in overrides.items()) or (
            "/etc/xdg/sagemaker/config.yaml or ~/.config/sagemaker/config.yaml")
        raise SconesError(f"the SageMaker defaults config cannot be used ({where}): "
                          f"{' '.join(str(exc).split())[:300]}; fix the file or unset the "
                          "variable") from None
    _validate_once(merged)
    return merged


def sagemaker_defaults_fingerprint() -> bytes | None:
    """What the SDK defaults config is read from (the override variables and the files'
    bytes), without importing the SDK: a key part for anything built from that config.
    None when it cannot be known here (a config the SDK would fetch from S3)."""
    parts = []
    for name, default in (("SAGEMAKER_ADMIN_CONFIG_OVERRIDE", "/etc/xdg/sagemaker/config.yaml"),
                          ("SAGEMAKER_USER_CONFIG_OVERRIDE",
                           str(Path.home() / ".config" / "sagemaker" / "config.yaml"))):
        where = os.environ.get(name, default)
        if where.startswith("s3://"):
            return None
        path = Path(where)
        files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        for file in files:
            try:
                parts.append(f"{file}\n".encode() + file.read_bytes())
            except OSError:
                parts.append(f"{file}: none\n".encode())
    return b"\n".join(parts)


def _deep_merge(into: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def _validate_once(validated: dict) -> None:
    """Make the SDK's per-lookup validation a no-op for `validated` (the one dict our
    sessions hold, validated above); any other config is still validated as before."""
    import sagemaker.session
    import sagemaker.utils

    for module in (sagemaker.utils, sagemaker.session):
        original = getattr(module, "validate_sagemaker_config", None)
        if original is None or getattr(original, "_scones_validated", None) is not None:
            continue

        def validate(config=None, *args, _original=original, **kwargs):
            if config is validated:
                return None
            return _original(config, *args, **kwargs)

        validate._scones_validated = validated
        setattr(module, "validate_sagemaker_config", validate)


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
