"""The plan of a local run: typed parameters, and which steps run in what order.

Everything here is checked before any step runs: unknown or mistyped parameters, step
types the runner cannot run, references to unknown steps, a CacheConfig it cannot read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from scones.local.pipeline_runner.expressions import step_references, to_text
from scones.local.pipeline_runner.cache import cache_expiry
from scones.errors import PipelineExecutionError

SUPPORTED_STEP_TYPES = ("Processing", "Training", "RegisterModel", "Condition", "Fail")
PARAMETER_TYPES = ("String", "Integer", "Float", "Boolean")
# The step types whose CacheConfig SageMaker honours that also run here.
CACHEABLE_STEP_TYPES = ("Processing", "Training")


# --- parameters ----------------------------------------------------------------------------

def _typed(name: str, kind: str, value: Any) -> Any:
    try:
        if kind == "String":
            if isinstance(value, (dict, list)):
                raise ValueError
            return to_text(value)
        if kind == "Integer":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).strip())
        if kind == "Float":
            if isinstance(value, bool):
                raise ValueError
            return float(str(value).strip()) if isinstance(value, str) else float(value)
        if kind == "Boolean":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "false"):
                return text == "true"
            raise ValueError
    except (TypeError, ValueError):
        raise PipelineExecutionError(
            f"parameter {name} is {kind}: {value!r} is not a valid {kind.lower()}") from None
    raise PipelineExecutionError(f"parameter {name} has unsupported type {kind!r} "
                                 f"(supported: {', '.join(PARAMETER_TYPES)})")


def resolve_parameters(definition: dict, overrides: dict | None) -> dict[str, Any]:
    """Defaults from the definition, then overrides, each typed by the parameter's Type."""
    declared = {p["Name"]: p for p in definition.get("Parameters", [])}
    unknown = sorted(set(overrides or {}) - set(declared))
    if unknown:
        raise PipelineExecutionError(
            f"unknown pipeline parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(declared) or '(none)'}")
    values = {}
    for name, spec in declared.items():
        kind = spec.get("Type", "String")
        if overrides and name in overrides:
            values[name] = _typed(name, kind, overrides[name])
        elif "DefaultValue" in spec:
            values[name] = _typed(name, kind, spec["DefaultValue"])
        else:
            raise PipelineExecutionError(f"parameter {name} has no default: pass a value "
                                         f"(--param {name}=...)")
    return values


# --- the plan: which steps, in what order ----------------------------------------------------

@dataclass
class PlannedStep:
    spec: dict
    branch: tuple[str, bool] | None      # (condition step, outcome it needs) or None
    depends_on: set[str]
    cache_expiry: timedelta | None = None  # None: the step is never taken from the cache

    @property
    def name(self) -> str:
        return self.spec["Name"]


def plan(definition: dict) -> dict[str, PlannedStep]:
    """Every step (top-level and inside Condition branches), with what it waits for.
    Unsupported step types and references to unknown steps are errors before anything runs."""
    steps: dict[str, PlannedStep] = {}

    def add(spec: dict, branch):
        name, kind = spec.get("Name"), spec.get("Type")
        if not name:
            raise PipelineExecutionError(f"a step without a Name: {json.dumps(spec)[:200]}")
        if name in steps:
            raise PipelineExecutionError(f"step name {name!r} is used twice")
        if kind not in SUPPORTED_STEP_TYPES:
            raise PipelineExecutionError(
                f"step {name!r} has type {kind!r}, which the local runner cannot run "
                f"(it runs: {', '.join(SUPPORTED_STEP_TYPES)}); run this pipeline on SageMaker "
                "(--env aws)")
        arguments = spec.get("Arguments", {})
        nested = []
        if kind == "Condition":
            nested = [(s, (name, True)) for s in arguments.get("IfSteps", [])] + \
                     [(s, (name, False)) for s in arguments.get("ElseSteps", [])]
            arguments = {k: v for k, v in arguments.items() if k not in ("IfSteps", "ElseSteps")}
        depends = set(spec.get("DependsOn", [])) | set(step_references(arguments))
        if branch:
            depends.add(branch[0])
        steps[name] = PlannedStep(spec, branch, depends, _cache_expiry(spec))
        for child, child_branch in nested:
            add(child, child_branch)

    for spec in definition.get("Steps", []):
        add(spec, None)
    for name, planned in steps.items():
        missing = sorted(planned.depends_on - set(steps))
        if missing:
            raise PipelineExecutionError(f"step {name!r} refers to unknown step(s) "
                                         f"{', '.join(missing)}")
        if name in planned.depends_on:
            raise PipelineExecutionError(f"step {name!r} depends on itself")
    return steps


def _cache_expiry(spec: dict) -> timedelta | None:
    """How old an earlier run of this step may be to be reused; None when caching is off
    (or the step type is one SageMaker does not cache)."""
    cache = spec.get("CacheConfig")
    if not cache or spec.get("Type") not in CACHEABLE_STEP_TYPES:
        return None
    if not isinstance(cache, dict):
        raise PipelineExecutionError(f"step {spec['Name']!r}: CacheConfig must be an object "
                                     f"with Enabled and ExpireAfter, got {cache!r}")
    if cache.get("Enabled") is not True:
        return None
    return cache_expiry(to_text(cache.get("ExpireAfter", "")), f"step {spec['Name']!r}")
