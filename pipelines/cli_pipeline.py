"""`scones pipeline definition|run|executions`: the model-build pipeline from the command line.

Locally the definition is built exactly as for SageMaker (pipeline.local_definition) and run
by pipelines.local_runner; with --env aws it is upserted and started on SageMaker.
"""
from __future__ import annotations

import json
import sys

from pipelines.cli_common import command_group, common_options, format_table
from pipelines.errors import SconesError
from pipelines.pipeline import pipeline_definition


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
    params = parse_params(args.param)
    if not config.is_local:
        return _run_on_sagemaker(args, config, params)
    from pipelines.local_runner import run_pipeline_locally

    print("building the pipeline definition ...", file=sys.stderr, flush=True)
    result = run_pipeline_locally(pipeline_definition(config), config, params, progress=True)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_table(["STEP", "TYPE", "STATUS", "SECONDS"],
                           [(s.name, s.type, s.status, f"{s.seconds:.1f}")
                            for s in result.steps]))
        print(f"execution {result.execution_id}: {result.status}"
              + (f"\nreason: {result.failure_reason}" if result.failure_reason else ""))
    return 0 if result.status == "Succeeded" else 1


def _run_on_sagemaker(args, config, params) -> int:
    from pipelines.pipeline import print_step, upsert_and_start

    result = upsert_and_start(config, params, wait=args.wait, on_step=print_step)
    if args.json:
        print(json.dumps({"execution_id": result["execution_arn"], "status": result["status"],
                          "steps": [{k: s.get(k) for k in ("name", "type", "status", "seconds")}
                                    for s in result["steps"]],
                          "failure_reason": result["failure_reason"]}))
    else:
        print(f"execution {result['execution_arn']}: {result['status']}"
              + (f"\nreason: {result['failure_reason']}" if result["failure_reason"] else ""))
    if not args.wait:
        return 0 if result["status"] in ("Executing", "Succeeded") else 1
    return 0 if result["status"] == "Succeeded" else 1


def executions_command(args, config) -> int:
    if config.is_local:
        from pipelines.executions import list_executions

        executions = list_executions(config, limit=args.limit)
    else:
        executions = _sagemaker_executions(config, args.limit)
    if args.json:
        print(json.dumps(executions, default=str))
        return 0
    if not executions:
        print("no pipeline executions yet (start one: scones pipeline run)")
        return 0
    rows = []
    for e in executions:
        seconds = sum(s["seconds"] or 0 for s in e.get("steps", []))
        rows.append((e["execution_id"], e["status"], e["start_time"],
                     f"{seconds:.1f}" if e.get("steps") else "",
                     _shorten(e.get("failure_reason"))))
    print(format_table(["EXECUTION", "STATUS", "STARTED", "SECONDS", "FAILURE"], rows))
    return 0


def _shorten(text: str | None, width: int = 70) -> str:
    first = (text or "").splitlines()[0] if text else ""
    return first if len(first) <= width else first[:width - 3] + "..."


def _sagemaker_executions(config, limit: int) -> list[dict]:
    import boto3

    client = boto3.client("sagemaker", region_name=config.aws.region)
    summaries = client.list_pipeline_executions(
        PipelineName=config.pipeline.name, SortBy="CreationTime", SortOrder="Descending",
        MaxResults=min(max(limit, 1), 100))["PipelineExecutionSummaries"]
    return [{"execution_id": s["PipelineExecutionArn"], "status": s["PipelineExecutionStatus"],
             "start_time": s.get("StartTime"), "failure_reason": s.get("PipelineExecutionFailureReason"),
             "steps": []} for s in summaries]
