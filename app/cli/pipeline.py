"""`scones pipeline definition|run|retry|executions`: the model-build pipeline from the
command line.

The definition is built exactly as for SageMaker (pipelines.pipeline.pipeline_definition) and
run by the backend's executor (pipelines.executors): the local runner, or SageMaker Pipelines.
Parameters are range-checked before anything runs (a named error, exit 2). A local run
stopped by Ctrl-C or SIGTERM is recorded Stopped and exits 128 + the signal's number;
`retry` continues a Failed or Stopped execution from its failed step.
"""
from __future__ import annotations

import json
import sys

from pipelines.executors import pipeline_executor
from pipelines.pipeline import pipeline_definition
from scones.backend import backend_for
from app.cli.common import command_group, common_options
from scones.console import format_table, print_json
from scones.errors import ExecutionStopped, SconesError


def register(subparsers) -> None:
    group = command_group(subparsers, "pipeline",
                          "the model-build pipeline: preprocess, train, evaluate, register")
    definition = group.add_parser(
        "definition", parents=[common_options()],
        help="print the pipeline definition JSON (the document SageMaker runs)")
    definition.set_defaults(func=definition_command)

    run = group.add_parser(
        "run", parents=[common_options()],
        help="run the pipeline: locally step by step, or start it on SageMaker (--env aws)")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a pipeline parameter, e.g. --param Epochs=5 --param "
                          "AccuracyThreshold=0.9 (typed by the parameter's declared type)")
    run.add_argument("--json", action="store_true",
                     help="print one JSON object with the result on stdout")
    run.add_argument("--wait", action="store_true",
                     help="with --env aws: follow the execution to its end (a local run "
                          "always runs to its end)")
    run.set_defaults(func=run_command)

    retry = group.add_parser(
        "retry", parents=[common_options()],
        help="re-run a Failed or Stopped execution from its failed step, reusing the steps "
             "that succeeded (SageMaker's RetryPipelineExecution)")
    retry.add_argument("execution_id", metavar="EXECUTION_ID",
                       help="the execution's id (scones pipeline executions) or ARN")
    retry.add_argument("--json", action="store_true",
                       help="print one JSON object with the result on stdout")
    retry.add_argument("--wait", action="store_true",
                       help="with --env aws: follow the execution to its end")
    retry.set_defaults(func=retry_command)

    executions = group.add_parser("executions", parents=[common_options()],
                                  help="list past pipeline executions, newest first")
    executions.add_argument("--json", action="store_true", help="print JSON on stdout")
    executions.add_argument("--limit", type=int, default=20, help="at most this many (20)")
    executions.set_defaults(func=executions_command)


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SconesError(f"--param {item!r}: expected NAME=VALUE, e.g. Epochs=5")
        params[name.strip()] = value
    return params


def definition_command(args, config) -> int:
    print(json.dumps(pipeline_definition(config), indent=2))
    return 0


def run_command(args, config) -> int:
    """Locally the definition runs step by step on this machine; on AWS it is upserted and
    started on SageMaker (followed to its end with --wait)."""
    executor = pipeline_executor(backend_for(config))
    try:
        result = executor.run(parameters=parse_params(args.param), wait=args.wait)
    except ExecutionStopped as stopped:
        return _stopped(stopped)
    return _report(result, args)


def retry_command(args, config) -> int:
    """The same execution again, from its failed step (locally or on SageMaker)."""
    executor = pipeline_executor(backend_for(config))
    try:
        result = executor.retry(args.execution_id, wait=args.wait)
    except ExecutionStopped as stopped:
        return _stopped(stopped)
    return _report(result, args)


def _stopped(stopped: ExecutionStopped) -> int:
    print(f"{stopped}, recorded Stopped; continue it: scones pipeline retry "
          f"{stopped.execution_id}", file=sys.stderr)
    return 128 + stopped.signal_number


def _report(result: dict, args) -> int:
    if args.json:
        print_json(result)
    else:
        if result["Steps"]:
            print(format_table(["STEP", "TYPE", "STATUS", "SECONDS"],
                               [(s["Name"], s["Type"], s["Status"] + _cache_mark(s),
                                 _seconds(s["Seconds"])) for s in result["Steps"]]))
        print(f"execution {result['ExecutionId']}: {result['Status']}"
              + (f"\nregistered model version {result['ModelPackageVersion']} "
                 f"(approve it: scones registry approve {result['ModelPackageVersion']})"
                 if result.get("ModelPackageVersion") is not None else "")
              + (f"\nreason: {result['FailureReason']}" if result["FailureReason"] else ""))
    if result["Status"] == "Executing" and not args.wait:
        return 0  # started on SageMaker, not followed
    return 0 if result["Status"] == "Succeeded" else 1


def executions_command(args, config) -> int:
    executions = pipeline_executor(backend_for(config)).executions(limit=args.limit)
    if args.json:
        print_json(executions)
        return 0
    if not executions:
        print("no pipeline executions yet (start one: scones pipeline run)")
        return 0
    rows = []
    for e in executions:
        steps = " ".join(f"{s['Name']}:{STEP_MARK.get(s['Status'], s['Status'])}"
                         + ("(cached)" if s.get("CacheHitResult") else "")
                         for s in e.get("Steps", []))
        rows.append((e["ExecutionId"], e["Status"], str(e["StartTime"])[:19], steps,
                     _shorten(e.get("FailureReason"))))
    print(format_table(["EXECUTION", "STATUS", "STARTED", "STEPS", "FAILURE"], rows))
    return 0


# One mark per step status, so a row shows how far each execution got.
STEP_MARK = {"Succeeded": "ok", "Failed": "FAILED", "Executing": "running",
             "Stopped": "stopped", "Starting": "starting"}


def _cache_mark(step: dict) -> str:
    source = (step.get("CacheHitResult") or {}).get("SourcePipelineExecutionArn")
    return f" (cached: {source.rpartition('/')[2]})" if source else ""


def _seconds(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else ""


def _shorten(text: str | None, width: int = 60) -> str:
    first = (text or "").splitlines()[0] if text else ""
    return first if len(first) <= width else first[:width - 3] + "..."
