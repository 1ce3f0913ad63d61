"""Evaluate the expressions of a SageMaker Pipeline definition (schema 2020-12-01).

The SDK's `pipeline.definition()` writes parameters, step properties, functions and
conditions as small JSON forms; this module gives them values:

    {"Get": "Parameters.Epochs"}                                  a pipeline parameter
    {"Get": "Execution.PipelineExecutionId"}                      an execution variable
    {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}        a step's property
    {"Get": "Steps.Pre.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri"}
    {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"}      a parsed property file
    {"Std:Join": {"On": "/", "Values": [...]}}
    {"Std:JsonGet": {"PropertyFile": {"Get": ...}, "Path": "a.b[0].c"}}
    conditions: {"Type": "GreaterThanOrEqualTo", "LeftValue": ..., "RightValue": ...}, ...

Everything unknown is a PipelineExecutionError naming what and where.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from scones.errors import PipelineExecutionError

# "Outputs['train']", "Containers[0]", "Metrics[\"x\"]" - one step of a property path.
_PATH_TOKEN = re.compile(r"""\.?([A-Za-z_][\w:-]*)|\[\s*(?:'([^']*)'|"([^"]*)"|(\d+))\s*\]""")
FUNCTIONS = ("Get", "Std:Join", "Std:JsonGet")


@dataclass
class PropertyFile:
    """A step's parsed property file (JSON), as {"Get": "Steps.X.PropertyFiles.Y"} yields."""
    step: str
    name: str
    document: Any


@dataclass
class Context:
    """What expressions can refer to while an execution runs."""
    parameters: dict[str, Any] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)   # PipelineExecutionId, ...
    steps: dict[str, dict] = field(default_factory=dict)      # step name -> its properties
    property_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Std:JsonGet with an S3Uri reads through this (the runner passes its object store).
    read_url: Callable[[str], bytes] | None = None


def resolve(value: Any, ctx: Context, where: str = "definition") -> Any:
    """The value with every expression inside it evaluated, recursively."""
    if isinstance(value, dict):
        if len(value) == 1:
            (key, argument), = value.items()
            if key == "Get":
                return _get(argument, ctx, where)
            if key == "Std:Join":
                return _join(argument, ctx, where)
            if key == "Std:JsonGet":
                return _json_get(argument, ctx, where)
        return {k: resolve(v, ctx, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, ctx, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def to_text(value: Any) -> str:
    """How a value reads inside a Join (and so inside a Fail step's message)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _get(reference: Any, ctx: Context, where: str) -> Any:
    if not isinstance(reference, str):
        raise PipelineExecutionError(f"{where}: Get needs a string reference, got {reference!r}")
    head, _, rest = reference.partition(".")
    if head == "Parameters":
        if rest not in ctx.parameters:
            raise PipelineExecutionError(f"{where}: {reference} is not a parameter of this "
                                         f"pipeline (known: {', '.join(sorted(ctx.parameters))})")
        return ctx.parameters[rest]
    if head == "Execution":
        if rest not in ctx.execution:
            raise PipelineExecutionError(f"{where}: unknown execution variable {reference} "
                                         f"(known: {', '.join(sorted(ctx.execution))})")
        value = ctx.execution[rest]
        return value() if callable(value) else value  # CurrentDateTime is read when used
    if head == "Steps":
        step, _, path = rest.partition(".")
        if path.startswith("PropertyFiles."):
            name = path[len("PropertyFiles."):]
            files = ctx.property_files.get(step, {})
            if name not in files:
                raise PipelineExecutionError(f"{where}: {reference}: step {step!r} has no "
                                             f"property file {name!r} (has it run?)")
            return PropertyFile(step, name, files[name])
        if step not in ctx.steps:
            raise PipelineExecutionError(f"{where}: {reference}: step {step!r} has not run "
                                         "(or does not exist), so it has no properties")
        return walk_path(ctx.steps[step], path, f"{where}: {reference}")
    raise PipelineExecutionError(f"{where}: cannot resolve {reference!r} (expected Parameters., "
                                 "Execution. or Steps.)")


def walk_path(node: Any, path: str, where: str) -> Any:
    """Follow "A.B['x'].C[0]" into dicts and lists. A list indexed by a string picks the
    element whose ...Name field equals it (Outputs['train'] -> OutputName == 'train'),
    as SageMaker's property lists do."""
    position = 0
    path = path.strip()
    while position < len(path):
        match = _PATH_TOKEN.match(path, position)
        if not match or match.end() == position:
            raise PipelineExecutionError(f"{where}: cannot parse property path at "
                                         f"{path[position:]!r}")
        position = match.end()
        name, quoted1, quoted2, index = match.groups()
        key = name if name is not None else (quoted1 if quoted1 is not None else quoted2)
        if index is not None:
            if not isinstance(node, list) or int(index) >= len(node):
                raise PipelineExecutionError(f"{where}: no element [{index}]")
            node = node[int(index)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and name is None:
            matches = [item for item in node if isinstance(item, dict) and any(
                k.endswith("Name") and v == key for k, v in item.items())]
            if not matches:
                raise PipelineExecutionError(f"{where}: no element named {key!r}")
            node = matches[0]
        else:
            raise PipelineExecutionError(f"{where}: no property {key!r}")
    return node


def _join(argument: Any, ctx: Context, where: str) -> str:
    if not isinstance(argument, dict) or not isinstance(argument.get("Values"), list):
        raise PipelineExecutionError(f"{where}: Std:Join needs On and a list of Values")
    values = resolve(argument["Values"], ctx, f"{where}.Std:Join")
    return to_text(argument.get("On", "")).join(to_text(v) for v in values)


def json_path_get(document: Any, path: str, where: str) -> Any:
    """JsonGet's path: dotted keys with [n] indexes, e.g. metrics.accuracy.value."""
    node = document
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(node, list) or index >= len(node):
                raise PipelineExecutionError(f"{where}: JsonGet path {path!r}: no element "
                                             f"{part}")
            node = node[index]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise PipelineExecutionError(f"{where}: JsonGet path {path!r}: no key {part!r} "
                                         f"(has: {', '.join(node) if isinstance(node, dict) else type(node).__name__})")
    return node


def _json_get(argument: Any, ctx: Context, where: str) -> Any:
    if not isinstance(argument, dict) or "Path" not in argument:
        raise PipelineExecutionError(f"{where}: Std:JsonGet needs a Path")
    path = resolve(argument["Path"], ctx, where)
    if "PropertyFile" in argument:
        source = argument["PropertyFile"]
        if isinstance(source, str):  # older SDKs name the file instead of a Get
            raise PipelineExecutionError(f"{where}: Std:JsonGet PropertyFile {source!r} "
                                         "must be a {'Get': 'Steps.X.PropertyFiles.Y'}")
        document = resolve(source, ctx, where)
        if not isinstance(document, PropertyFile):
            raise PipelineExecutionError(f"{where}: Std:JsonGet PropertyFile does not refer to "
                                         "a property file")
        return json_path_get(document.document, path,
                             f"{where} (property file {document.step}.{document.name})")
    if "S3Uri" in argument:
        url = to_text(resolve(argument["S3Uri"], ctx, where))
        if ctx.read_url is None:
            raise PipelineExecutionError(f"{where}: Std:JsonGet on {url} needs an object store")
        try:
            document = json.loads(ctx.read_url(url))
        except ValueError as exc:
            raise PipelineExecutionError(f"{where}: {url} is not JSON: {exc}") from None
        return json_path_get(document, path, f"{where} ({url})")
    raise PipelineExecutionError(f"{where}: Std:JsonGet needs a PropertyFile or an S3Uri")


# --- conditions -------------------------------------------------------------------------

_COMPARISONS = {
    "Equals": lambda a, b: a == b,
    "GreaterThan": lambda a, b: a > b,
    "GreaterThanOrEqualTo": lambda a, b: a >= b,
    "LessThan": lambda a, b: a < b,
    "LessThanOrEqualTo": lambda a, b: a <= b,
}


def _comparable(left: Any, right: Any, kind: str, where: str) -> tuple[Any, Any]:
    """Numbers compare as numbers even when one side arrived as text (a Join, a JSON
    string); anything else must already be the same kind."""
    def number(v):
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, float)):
            return v
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return None
        return None

    if number(left) is not None and number(right) is not None:
        return number(left), number(right)
    if kind == "Equals":
        return left, right
    raise PipelineExecutionError(f"{where}: {kind} cannot compare {left!r} with {right!r}")


def evaluate_condition(condition: dict, ctx: Context, where: str = "condition") -> bool:
    if not isinstance(condition, dict) or "Type" not in condition:
        raise PipelineExecutionError(f"{where}: a condition needs a Type, got {condition!r}")
    kind = condition["Type"]
    if kind in _COMPARISONS:
        left = resolve(condition.get("LeftValue"), ctx, f"{where}.LeftValue")
        right = resolve(condition.get("RightValue"), ctx, f"{where}.RightValue")
        return bool(_COMPARISONS[kind](*_comparable(left, right, kind, where)))
    if kind == "Not":
        return not evaluate_condition(condition.get("Expression"), ctx, f"{where}.Not")
    if kind == "Or":
        return any(evaluate_condition(c, ctx, f"{where}.Or[{i}]")
                   for i, c in enumerate(condition.get("Conditions") or []))
    if kind == "In":
        query = resolve(condition.get("QueryValue"), ctx, f"{where}.QueryValue")
        values = resolve(condition.get("Values") or [], ctx, f"{where}.Values")
        return any(_COMPARISONS["Equals"](*_comparable(query, v, "Equals", where))
                   for v in values)
    raise PipelineExecutionError(f"{where}: unsupported condition type {kind!r} (supported: "
                                 f"{', '.join([*_COMPARISONS, 'Not', 'Or', 'In'])})")


def evaluate_conditions(conditions: list, ctx: Context, where: str) -> bool:
    """A Condition step's list: all must hold (SageMaker ANDs them)."""
    return all(evaluate_condition(c, ctx, f"{where}.Conditions[{i}]")
               for i, c in enumerate(conditions))


# --- references, for ordering steps -------------------------------------------------------

def step_references(value: Any) -> Iterator[str]:
    """Names of the steps an expression tree reads from (Get "Steps.X...")."""
    if isinstance(value, dict):
        if set(value) == {"Get"} and isinstance(value["Get"], str) \
                and value["Get"].startswith("Steps."):
            yield value["Get"].split(".")[1]
            return
        for v in value.values():
            yield from step_references(v)
    elif isinstance(value, list):
        for v in value:
            yield from step_references(v)
