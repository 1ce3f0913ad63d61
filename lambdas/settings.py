"""The Lambdas' configuration: environment variables, read here and nowhere else.

Read at each call, not at import: the local engine runs several functions (and several
configurations, in tests) in one process, so a value frozen at import would go stale.
Each function reads only what it needs; a missing or malformed value is a
ConfigurationError that names the variable.
"""
from __future__ import annotations

import math
import os
from typing import Mapping

from lambdas.errors import ConfigurationError, InvalidEvent

ENDPOINT_NAME = "ENDPOINT_NAME"
CONFIDENCE_THRESHOLD = "CONFIDENCE_THRESHOLD"
CLASS_NAMES = "CLASS_NAMES"


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _required(name: str, environ: Mapping[str, str] | None) -> str:
    value = _environ(environ).get(name, "").strip()
    if not value:
        raise ConfigurationError(f"environment variable {name} is not set")
    return value


def endpoint_name(environ: Mapping[str, str] | None = None) -> str:
    """ENDPOINT_NAME: the SageMaker endpoint the classify function invokes."""
    return _required(ENDPOINT_NAME, environ)


ALLOWED_ENDPOINT_NAMES = "ALLOWED_ENDPOINT_NAMES"
EVENT_ENDPOINT_KEY = "endpoint_name"   # the execution input's choice of endpoint


def endpoint_for(requested, environ: Mapping[str, str] | None = None) -> str:
    """The endpoint to invoke: the one the execution input names (`endpoint_name`: the
    staging test sends its stage's), if ENDPOINT_NAME or ALLOWED_ENDPOINT_NAMES (comma-
    separated) lists it; ENDPOINT_NAME (prod) when the input names none. Any other is
    refused: the input must not steer the function to an endpoint it was not given."""
    default = endpoint_name(environ)
    if requested is None or requested == "":
        return default
    allowed = {default} | {n.strip() for n in _environ(environ).get(
        ALLOWED_ENDPOINT_NAMES, "").split(",") if n.strip()}
    if not isinstance(requested, str) or requested not in allowed:
        raise InvalidEvent(f"{EVENT_ENDPOINT_KEY} {requested!r} is not an endpoint this "
                           f"function may call ({', '.join(sorted(allowed))}); leave it out "
                           f"for {default}")
    return requested


def confidence_threshold(environ: Mapping[str, str] | None = None) -> float:
    """CONFIDENCE_THRESHOLD: a number in [0, 1]."""
    raw = _required(CONFIDENCE_THRESHOLD, environ)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(
            f"environment variable {CONFIDENCE_THRESHOLD} must be a number, got {raw!r}") from None
    if math.isnan(value) or not 0 <= value <= 1:
        raise ConfigurationError(
            f"environment variable {CONFIDENCE_THRESHOLD} must be between 0 and 1, got {raw!r}")
    return value


def class_names(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """CLASS_NAMES: comma-separated, in the model's output order, e.g. "bicycle,motorcycle"."""
    raw = _required(CLASS_NAMES, environ)
    names = tuple(part.strip() for part in raw.split(","))
    if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigurationError(
            f"environment variable {CLASS_NAMES} must list at least two distinct, non-empty "
            f"class names separated by commas, got {raw!r}")
    return names


def aws_region(environ: Mapping[str, str] | None = None) -> str:
    """The region the function runs in: AWS_REGION (the Lambda runtime sets it), else
    AWS_DEFAULT_REGION."""
    env = _environ(environ)
    region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip()
    if not region:
        raise ConfigurationError("environment variable AWS_REGION is not set (the Lambda "
                                 "runtime sets it; a local engine must too)")
    return region


def endpoint_url_override(service_env_name: str, environ: Mapping[str, str] | None = None
                          ) -> str | None:
    """The AWS_ENDPOINT_URL_<SERVICE> (or AWS_ENDPOINT_URL) boto3 will use, if any.

    Only used to key the client cache: a client made for one endpoint URL must not serve
    a later call meant for another (the local engine restarts its endpoint on new ports).
    """
    env = _environ(environ)
    return env.get(f"AWS_ENDPOINT_URL_{service_env_name}") or env.get("AWS_ENDPOINT_URL")
