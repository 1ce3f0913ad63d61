"""The inference workflow's state machine, built with the Step Functions Data Science SDK,
and the table of its Lambda functions (names, handlers, environment) everyone imports.

serialize image (S3 -> base64) -> classify (SageMaker endpoint) -> filter (threshold).
The Lambdas' FunctionName is the function's NAME, not its ARN, so the same ASL runs on
any account and in the local engine. Failures keep their Lambda error name: a
ThresholdConfidenceNotMet ends in the Fail state "ThresholdNotMet", a NotAVehicle (the
picture is unlike every training picture) in "NotAVehicle"; anything else in
"InferenceFailed"; both carry the original error's Cause. Errors Step Functions itself
raises (States.Timeout, States.Runtime...) may not be re-raised under their own name by
a Fail state (names starting "States." are reserved), so they pass through
"WrapStatesError" first: Error "WorkflowError", Cause = the caught error as JSON.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from typing import Callable

from scones.backend import aws_partition
from scones.config import Config
from scones.deploy_settings import deploy_lambda_environment
from scones.errors import SconesError
from scones.sdk import stepfunctions_sdk

# State names: the execution history and the local runner refer to these.
SERIALIZE_STATE = "SerializeImageData"
CLASSIFY_STATE = "ClassifyImage"
FILTER_STATE = "FilterInferences"
THRESHOLD_FAIL_STATE = "ThresholdNotMet"
ERROR_FAIL_STATE = "InferenceFailed"
ROUTE_ERROR_STATE = "IsStatesError"
WRAP_STATES_ERROR_STATE = "WrapStatesError"
WORKFLOW_ERROR = "WorkflowError"                # what a States.* error is reported as
THRESHOLD_ERROR = "ThresholdConfidenceNotMet"   # lambdas.errors class names = Step Functions Errors
NOT_A_VEHICLE_ERROR = "NotAVehicle"
NOT_A_VEHICLE_FAIL_STATE = "NotAVehicle"
THROTTLED_ERROR = "EndpointThrottled"

# Errors the Lambda service itself raises for transient trouble (AWS's recommended retrier
# for lambda:invoke tasks).
TRANSIENT_LAMBDA_ERRORS = ["Lambda.ServiceException", "Lambda.AWSLambdaException",
                           "Lambda.SdkClientException", "Lambda.TooManyRequestsException"]
MAX_STATE_NAME_LENGTH = 80  # AWS rejects longer state names


class WorkflowDefinitionError(SconesError):
    """The state machine definition is not one AWS would accept."""


@dataclass(frozen=True)
class LambdaSpec:
    """One function of the project. To add a function: a module lambdas/<key>.py with a
    lambda_handler, and a LambdaSpec here (its environment computed from the Config)."""
    key: str                                        # the module name in lambdas/
    description: str
    environment: Callable[[Config], dict[str, str]] = field(default=lambda config: {})
    timeout: int = 30                               # seconds
    memory_size: int = 256                          # MB
    in_workflow: bool = True                        # a state of the inference workflow
    in_bulk: bool = False                           # a state of the bulk workflow (workflow.bulk)


@dataclass(frozen=True)
class LambdaFunction:
    """A LambdaSpec resolved for one configuration: what deploy and the engine need."""
    key: str
    name: str
    module: str
    handler: str
    environment: dict[str, str]
    timeout: int
    memory_size: int
    description: str
    in_workflow: bool
    in_bulk: bool = False


LAMBDA_SPECS: tuple[LambdaSpec, ...] = (
    LambdaSpec(
        "serialize_image_data", "Reads an image from S3 into the event as base64",
        timeout=30, memory_size=256),
    LambdaSpec(
        "classify_image", "Classifies the event's image with the SageMaker endpoint",
        environment=lambda config: {"ENDPOINT_NAME": config.workflow.endpoint_name,
                                    "CLASS_NAMES": ",".join(config.classes)},
        timeout=75, memory_size=256),   # InvokeEndpoint may take up to 60 s
    LambdaSpec(
        "filter_inferences", "Passes confident inferences, fails the others",
        environment=lambda config: {
            "CONFIDENCE_THRESHOLD": repr(config.workflow.confidence_threshold),
            "CLASS_NAMES": ",".join(config.classes)},
        timeout=10, memory_size=128),
    LambdaSpec(
        "deploy_approved_model",
        "Deploys model versions approved in the Model Registry to the endpoint, with data "
        "capture", environment=deploy_lambda_environment, timeout=60, memory_size=128,
        in_workflow=False),   # started by the approval EventBridge rule, not a state
    # The bulk workflow (workflow/bulk.py): plan batches -> Distributed Map of batches -> sum up.
    LambdaSpec(
        "plan_image_batches", "Lists an S3 prefix into a manifest of image batches",
        timeout=900, memory_size=1024,   # 1 million keys: ~1,000 list calls, ~100 MB of keys
        in_workflow=False, in_bulk=True),
    LambdaSpec(
        "classify_image_batch",
        "Serialize, classify (one endpoint request per batch) and filter a batch of images",
        environment=lambda config: {
            "ENDPOINT_NAME": config.workflow.endpoint_name,
            "CONFIDENCE_THRESHOLD": repr(config.workflow.confidence_threshold),
            "CLASS_NAMES": ",".join(config.classes)},
        timeout=300, memory_size=1024, in_workflow=False, in_bulk=True),
    LambdaSpec(
        "summarize_bulk_run", "Counts a bulk run's results and applies the failure threshold",
        timeout=300, memory_size=512, in_workflow=False, in_bulk=True),
)


def function_name(config: Config, key: str) -> str:
    """e.g. "scones-classify-image" for key "classify_image"."""
    return f"{config.workflow.lambda_prefix}-{key.replace('_', '-')}"


def lambda_functions(config: Config, specs: tuple[LambdaSpec, ...] = LAMBDA_SPECS
                     ) -> dict[str, LambdaFunction]:
    """{key: LambdaFunction} in table order."""
    return {
        spec.key: LambdaFunction(
            key=spec.key, name=function_name(config, spec.key), module=f"lambdas.{spec.key}",
            handler=f"lambdas.{spec.key}.lambda_handler",
            environment=dict(spec.environment(config)), timeout=spec.timeout,
            memory_size=spec.memory_size, description=spec.description,
            in_workflow=spec.in_workflow, in_bulk=spec.in_bulk)
        for spec in specs
    }


@functools.lru_cache(maxsize=None)
def fail_with_caught_error(sdk_steps, state_id: str, error: str | None, comment: str):
    """A Fail state whose Cause (and Error, unless given) come from the caught error.

    The SDK's Fail only knows static Error/Cause; ASL's ErrorPath/CausePath copy the
    Catch's {"Error", "Cause"} into the execution's result, so the execution reports the
    Lambda's own error name and message instead of a generic one.
    """
    class FailFromCaughtError(sdk_steps.Fail):
        def to_dict(self):
            result = super().to_dict()
            if "Error" not in result:
                result["ErrorPath"] = "$.Error"
            result["CausePath"] = "$.Cause"
            return result

    return FailFromCaughtError(state_id, comment=comment, **({"error": error} if error else {}))


def lambda_task_state(sdk_steps, config: Config, function: LambdaFunction, state_id: str,
                      comment: str):
    """A lambda:invoke Task for `function`, by name, with the transient-error retrier."""
    state = sdk_steps.LambdaStep(
        state_id, comment=comment,
        parameters={"FunctionName": function.name, "Payload.$": "$"},
        output_path="$.Payload",
        timeout_seconds=function.timeout + 15)  # the function's own timeout fires first
    # The SDK derives the ARN's partition from whatever region the ambient boto3
    # session has (none -> "aws", cn-north-1 -> "aws-cn"); the configured region
    # decides here, so the same config always gives the same ASL.
    state.fields["resource"] = (f"arn:{aws_partition(config.aws.region)}:states:::"
                                "lambda:invoke")
    state.add_retry(sdk_steps.Retry(error_equals=TRANSIENT_LAMBDA_ERRORS,
                                    interval_seconds=1, max_attempts=3, backoff_rate=2.0))
    return state


def build_workflow(config: Config, client=None):
    """The inference workflow as a stepfunctions.workflow.Workflow (role:
    config.aws.states_role_arn). `client`: a boto3 stepfunctions client for the SDK's
    create/update/execute; by default one for config.aws.region (made, not used, here)."""
    stepfunctions_sdk()  # imports it quietly; the submodules below are then plain imports
    from stepfunctions import steps
    from stepfunctions.workflow import Workflow

    functions = lambda_functions(config)
    threshold_failed = fail_with_caught_error(
        steps, THRESHOLD_FAIL_STATE, THRESHOLD_ERROR,
        "The best class probability is below the confidence threshold; the Cause holds "
        "the inferences and the predicted label")
    not_a_vehicle = fail_with_caught_error(
        steps, NOT_A_VEHICLE_FAIL_STATE, NOT_A_VEHICLE_ERROR,
        "The picture's out-of-distribution score passes its model version's threshold: not "
        "a bicycle or a motorcycle; the Cause holds the score, threshold and inferences")
    failed = fail_with_caught_error(
        steps, ERROR_FAIL_STATE, None,
        "Any other failure: the Lambda's error name and message, unchanged")
    wrap_states_error = steps.Pass(
        WRAP_STATES_ERROR_STATE,
        comment="Step Functions' own errors (States.*): reserved names, so report them as "
                f"{WORKFLOW_ERROR} with the caught error as the Cause",
        parameters={"Error": WORKFLOW_ERROR, "Cause.$": "States.JsonToString($)"})
    wrap_states_error.next(failed)
    route_error = steps.Choice(ROUTE_ERROR_STATE,
                               comment="Lambda errors go to the Fail state as they are")
    route_error.add_choice(steps.ChoiceRule.StringMatches(variable="$.Error", value="States.*"),
                           next_step=wrap_states_error)
    route_error.default_choice(failed)

    def lambda_state(state_id: str, key: str, comment: str):
        return lambda_task_state(steps, config, functions[key], state_id, comment)

    serialize = lambda_state(SERIALIZE_STATE, "serialize_image_data",
                             "Read the image from S3 into image_data (base64)")
    classify = lambda_state(CLASSIFY_STATE, "classify_image",
                            "Invoke the SageMaker endpoint; fill inferences")
    classify.add_retry(steps.Retry(error_equals=[THROTTLED_ERROR],
                                   interval_seconds=2, max_attempts=4, backoff_rate=2.0))
    filter_ = lambda_state(FILTER_STATE, "filter_inferences",
                           "Keep confident inferences; fail below the threshold")
    filter_.add_catch(steps.Catch(error_equals=[NOT_A_VEHICLE_ERROR], next_step=not_a_vehicle))
    filter_.add_catch(steps.Catch(error_equals=[THRESHOLD_ERROR], next_step=threshold_failed))
    for state in (serialize, classify, filter_):
        state.add_catch(steps.Catch(error_equals=["States.ALL"], next_step=route_error))

    if client is None:
        import boto3
        client = boto3.client("stepfunctions", region_name=config.aws.region)
    return Workflow(
        name=config.workflow.state_machine_name,
        definition=steps.Chain([serialize, classify, filter_]),
        role=config.aws.states_role_arn or "",
        comment="Scones Unlimited: classify a delivery-vehicle image (bicycle or "
                "motorcycle) and keep only confident inferences",
        timeout_seconds=600,
        client=client,
    )


def workflow_definition(config: Config) -> dict:
    """The ASL as a dict, checked (see check_definition)."""
    return json.loads(workflow_definition_json(config))


@functools.lru_cache(maxsize=32)
def workflow_definition_json(config: Config) -> str:
    """The ASL exactly as deployed (the SDK's JSON), checked first.

    Cached per (frozen, hashable) Config in the process, and on disk (cached_definition):
    building it through the SDK imports sagemaker and stepfunctions (seconds), which a
    one-image `workflow run` must not pay each time.
    """
    def build() -> str:
        return build_workflow(config).definition.to_json(pretty=True)

    text = cached_definition(config, "inference", build)
    check_definition(json.loads(text))
    return text


# What a definition is built from, besides the config: these sources and the SDK's.
DEFINITION_SOURCES = ("workflow/definition.py", "workflow/bulk.py")
ASL_CACHE_FOLDER = "cache/asl"


def definition_cache_key(config: Config, kind: str) -> str:
    """A hash of everything the ASL depends on: the config values that go into it (the
    workflow section, region, classes, the Lambda table's names and timeouts), the
    sources of this module, workflow/bulk.py and lambdas/*.py, and the Step Functions
    SDK's own state classes (found without importing it)."""
    import dataclasses
    import hashlib
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    digest.update(json.dumps({
        "kind": kind, "workflow": dataclasses.asdict(config.workflow),
        "region": config.aws.region, "classes": list(config.classes),
        "functions": [(f.name, f.timeout) for f in lambda_functions(config).values()],
    }, sort_keys=True, default=str).encode())
    sources = [root / name for name in DEFINITION_SOURCES]
    sources += sorted((root / "lambdas").glob("*.py"))
    spec = importlib.util.find_spec("stepfunctions")
    if spec is not None and spec.origin:
        sdk = Path(spec.origin).parent
        sources += [sdk / "steps" / "states.py", sdk / "steps" / "compute.py",
                    sdk / "workflow" / "stepfunctions.py"]
    for path in sources:
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()[:32]


def cached_definition(config: Config, kind: str, build: Callable[[], str]) -> str:
    """build()'s ASL text, kept under <workspace>/cache/asl/<kind>-<key>.json; a changed
    config value or source gives a new key, so a stale definition is never used. An
    unreadable or unwritable cache only means building it again."""
    from pathlib import Path

    folder = Path(config.local.workspace) / ASL_CACHE_FOLDER
    path = folder / f"{kind}-{definition_cache_key(config, kind)}.json"
    try:
        text = path.read_text()
        json.loads(text)
        return text
    except (OSError, ValueError):
        pass
    text = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)  # never a half-written definition under the final name
    except OSError:
        pass
    return text


def check_definition(asl: dict, where: str = "state machine definition") -> None:
    """Refuse what CreateStateMachine would: unknown StartAt/Next/Catch targets, states
    no path reaches, a non-terminal state without Next, misplaced States.ALL; a Map's
    ItemProcessor (or Iterator) is checked the same way, as a graph of its own."""
    def fail(why: str) -> None:
        raise WorkflowDefinitionError(f"{where}: {why}")

    states = asl.get("States")
    if not isinstance(states, dict) or not states:
        fail("no States")
    if asl.get("StartAt") not in states:
        fail(f"StartAt {asl.get('StartAt')!r} is not a state")
    edges: dict[str, list[str]] = {}
    for name, state in states.items():
        if not 0 < len(name) <= MAX_STATE_NAME_LENGTH:
            fail(f"state name {name!r} must be 1 to {MAX_STATE_NAME_LENGTH} characters")
        kind = state.get("Type")
        targets = [state["Next"]] if "Next" in state else []
        if kind in ("Succeed", "Fail"):
            if targets or state.get("End"):
                fail(f"{kind} state {name!r} must not have Next or End")
            if "Error" in state and "ErrorPath" in state or "Cause" in state and "CausePath" in state:
                fail(f"Fail state {name!r} has both a value and a path for Error or Cause")
        elif kind == "Choice":
            targets += [c.get("Next") for c in state.get("Choices", [])]
            targets += [state["Default"]] if "Default" in state else []
        elif bool(targets) == bool(state.get("End")):
            fail(f"state {name!r} must have exactly one of Next and End")
        if kind == "Task" and not state.get("Resource"):
            fail(f"Task state {name!r} has no Resource")
        if kind == "Map":
            processor = state.get("ItemProcessor") or state.get("Iterator")
            if not isinstance(processor, dict):
                fail(f"Map state {name!r} has no ItemProcessor")
            check_definition(processor, f"{where}, Map state {name!r}")
        for block in ("Retry", "Catch"):
            rules = state.get(block, [])
            for index, rule in enumerate(rules):
                errors = rule.get("ErrorEquals")
                if not errors:
                    fail(f"{name}.{block}[{index}] has no ErrorEquals")
                if "States.ALL" in errors and (len(errors) > 1 or index != len(rules) - 1):
                    fail(f"{name}.{block}[{index}]: States.ALL must be alone and last")
                if block == "Catch":
                    targets.append(rule.get("Next"))
        for target in targets:
            if target not in states:
                fail(f"state {name!r} goes to {target!r}, which is not a state")
        edges[name] = targets
    reached, todo = set(), [asl["StartAt"]]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(edges[name])
    unreachable = sorted(set(states) - reached)
    if unreachable:
        fail(f"states not reachable from {asl['StartAt']!r}: {', '.join(unreachable)}")
