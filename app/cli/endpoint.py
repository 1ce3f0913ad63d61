"""`scones endpoint deploy|status|test|promote|serve`: which model version each stage's
endpoint serves (staging, prod), the staging test, promotion, and the local endpoint itself.

    registry approve N -> staging -> endpoint test --stage staging -> endpoint promote -> prod
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time

from scones.backend import backend_for
from app.cli.common import command_group, common_options
from scones.config import STAGES, Config
from scones.console import format_table
from scones.processes import exit_if_stop_hangs


def register(subparsers) -> None:
    endpoint = command_group(subparsers, "endpoint",
                             "the inference endpoints: deploy, status, test, promote, serve")
    deploy = endpoint.add_parser(
        "deploy", parents=[common_options()],
        help="deploy an Approved model version to a stage (an older one = rollback)",
        description="Deploy an Approved registered version to a stage's endpoint with data "
                    "capture: locally the endpoint state file the local server follows "
                    "(health-checked before the switch, baked, rolled back on errors), on "
                    "AWS (--env aws) a SageMaker model, endpoint config and endpoint.")
    deploy.add_argument("--version", required=True, metavar="N",
                        help="model package version to deploy")
    deploy.add_argument("--stage", choices=STAGES, default="prod",
                        help="which endpoint (default prod: what the inference workflow calls)")
    deploy.add_argument("--json", action="store_true", help="print the result as JSON")
    deploy.set_defaults(func=_deploy)

    status = endpoint.add_parser("status", parents=[common_options()],
                                 help="which model version each stage serves",
                                 description="Which model version staging and prod serve, "
                                             "their status, data capture, staging test "
                                             "results and earlier deployments.")
    status.add_argument("--stage", choices=STAGES, help="one stage only")
    status.add_argument("--json", action="store_true",
                        help="print JSON (a list, one object per stage)")
    status.set_defaults(func=_status)

    test = endpoint.add_parser(
        "test", parents=[common_options()],
        help="run the inference workflow on held-back images against a stage",
        description="Run the inference workflow against the stage's endpoint on held-back "
                    "images of the test split of the pipeline execution that built the "
                    "version it serves; check accuracy and failure rate against "
                    "deployment.<stage>.test_min_accuracy / test_max_failure_rate and record "
                    "the result with the version. Exit 1 when it fails.")
    test.add_argument("--stage", choices=STAGES, default="staging")
    test.add_argument("--json", action="store_true", help="print the result as JSON")
    test.set_defaults(func=_test)

    promote = endpoint.add_parser(
        "promote", parents=[common_options()],
        help="put staging's version on prod (only if it passed its staging test)",
        description="Deploy the version staging serves to prod, with prod's guardrails; "
                    "refused unless that version passed `scones endpoint test --stage "
                    "staging`.")
    promote.add_argument("--json", action="store_true", help="print the result as JSON")
    promote.set_defaults(func=_promote)
    serve = endpoint.add_parser(
        "serve", parents=[common_options()],
        help="serve the deployed model on 127.0.0.1 until Ctrl-C",
        description="Serve the local endpoint: GET /ping, POST /invocations and the "
                    "SageMaker Runtime route POST /endpoints/NAME/invocations.")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    serve.add_argument("--model-version", type=int, metavar="N",
                       help="serve this registered version instead of the deployed one")
    serve.add_argument("--stage", choices=STAGES, default="prod",
                       help="serve this stage's endpoint (default prod)")
    serve.set_defaults(func=serve_command)


def _deploy(args, config) -> int:
    from workflow.stages import deploy_model_package

    result = deploy_model_package(config, args.version, stage=args.stage)
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    print_deployment(result)
    return 0


def print_deployment(result: dict) -> None:
    if result["Action"] == "none":
        print(f"{result.get('Stage', '')} endpoint {result['EndpointName']}: already serves "
              f"version {result['ModelPackageVersion']}; nothing changed")
        return
    if result["Action"] == "resumed":
        started = (result.get("ResumedBake") or {}).get("StartedAt")
        print(f"{result.get('Stage', '')} endpoint {result['EndpointName']}: resumed the "
              f"unfinished bake of version {result['ModelPackageVersion']} (started {started}"
              f", cut short): baked {result['BakedSeconds']:g} s without crossing the "
              "error-rate alarm")
        return
    print(f"{result['Action']} {result.get('Stage', '')} endpoint {result['EndpointName']}: "
          f"serving version {result['ModelPackageVersion']} ({result['ModelPackageArn']})")
    if result.get("BakedSeconds"):
        print(f"health-checked before the switch; baked {result['BakedSeconds']:g} s "
              "without crossing the error-rate alarm")
    if result.get("PreviousEndpointConfigName"):
        print(f"previous endpoint config: {result['PreviousEndpointConfigName']}")
    capture = result["DataCaptureConfig"]
    print(f"data capture: {capture['InitialSamplingPercentage']}% to "
          f"{capture['DestinationS3Uri']}")


def _test(args, config) -> int:
    from workflow.stage_test import run_stage_test

    result = run_stage_test(config, args.stage, progress=not args.json)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        verdict = "PASSED" if result["Passed"] else "FAILED"
        print(f"{args.stage} test of version {result['ModelPackageVersion']} on "
              f"{result['EndpointName']}: {verdict}: accuracy {result['Accuracy']:.3f} "
              f"(at least {result['MinAccuracy']}), failure rate {result['FailureRate']:.3f} "
              f"(at most {result['MaxFailureRate']}) over {result['Images']} held-back images")
        if result["Failures"]:
            print(f"  failures: {', '.join(result['Failures'])}")
        if result["Passed"] and args.stage == "staging":
            print("  promote it with `scones endpoint promote`")
    return 0 if result["Passed"] else 1


def _promote(args, config) -> int:
    from workflow.stages import promote

    result = promote(config)
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    print_deployment(result)
    return 0


def _status(args, config) -> int:
    from workflow.stages import endpoint_status, stage_test_result

    backend = backend_for(config)
    statuses = [endpoint_status(config, backend, stage) for stage in
                ([args.stage] if args.stage else STAGES)]
    for status in statuses:
        if status.get("ModelPackageArn") and status.get("ModelPackageVersion") is not None:
            package = backend.registry().describe(status["ModelPackageVersion"])
            status["StagingTest"] = stage_test_result(config, backend, package, "staging")
    if args.json:
        print(json.dumps(statuses if not args.stage else statuses[0], default=str))
        return 0
    for status in statuses:
        _print_status(status)
    return 0


def _print_status(status: dict) -> None:
    stage = status.get("Stage", "")
    if status["EndpointStatus"] == "NotDeployed":
        how = ("approve a version: `scones registry approve N`" if stage == "staging" else
               "promote staging's version: `scones endpoint promote`")
        print(f"{stage}: endpoint {status['EndpointName']}: not deployed ({how}, or "
              f"`scones endpoint deploy --stage {stage} --version N`)")
        return
    print(f"{stage}: endpoint {status['EndpointName']}: {status['EndpointStatus']}, serving "
          f"version {status['ModelPackageVersion']}")
    for key in ("ModelPackageArn", "EndpointConfigName", "LastModifiedTime", "LocalModelData"):
        if status.get(key):
            print(f"  {key}: {status[key]}")
    bake = status.get("UnfinishedBake")
    if bake:
        resume = ("`scones endpoint promote` resumes it" if stage == "prod" else
                  f"`scones endpoint deploy --stage {stage} --version "
                  f"{bake['ModelPackageVersion']}` resumes it")
        print(f"  WARNING: the bake of version {bake['ModelPackageVersion']} did not finish "
              f"(started {bake['StartedAt']} by pid {bake['Pid']}, which is gone): {resume}, "
              f"rolling back to version {bake['PreviousVersion']} if it fails")
    dropped = status.get("DroppedCaptureRecords")
    if dropped:
        print(f"  data capture: {dropped} record(s) dropped, predictions still answered "
              f"(last error: {status.get('CaptureLastError')})")
    test = status.get("StagingTest")
    if test:
        print(f"  staging test: {'passed' if test.get('Passed') else 'FAILED'} (accuracy "
              f"{test.get('Accuracy')}, failure rate {test.get('FailureRate')})")
    elif status.get("ModelPackageVersion") is not None:
        print("  staging test: not run (`scones endpoint test --stage staging`)")
    rollback = status.get("LastRollback")
    if rollback:
        print(f"  last rollback: version {rollback.get('FromVersion')}: {rollback.get('Reason')}")
    capture = status.get("DataCaptureConfig") or {}
    if capture:
        percentage = capture.get("InitialSamplingPercentage",
                                 capture.get("CurrentSamplingPercentage"))
        print(f"  data capture: {'on' if capture.get('EnableCapture') else 'off'}, "
              f"{percentage}% to {capture.get('DestinationS3Uri')}")
    history = status.get("History") or []
    if history:
        print("  earlier deployments (newest last):")
        print(format_table(["version", "deployed", "endpoint config"],
                           [(h.get("ModelPackageVersion"), h.get("LastModifiedTime"),
                             h.get("EndpointConfigName")) for h in history]))


STOP_POLL_S = 0.5


def serve_command(args, config: Config) -> int:
    if args.stage != "prod":  # the local server serves config.workflow.endpoint_name
        config = config.replace(workflow=dataclasses.replace(
            config.workflow, endpoint_name=config.stage_endpoint_name(args.stage)))
    with backend_for(config).serve_endpoint(port=args.port,
                                            model_version=args.model_version) as endpoint:
        model = endpoint.model
        # From the first line on, a stop (Ctrl-C, SIGTERM) is the normal end: exit 0, even
        # when it comes while the second line is printed.
        try:
            print(f"endpoint {endpoint.endpoint_name} serving model version "
                  f"{model.version if model.version is not None else '?'} ({model.source}) "
                  f"at {endpoint.url}", flush=True)
            print(f"  boto3: AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={endpoint.url}; "
                  f"Ctrl-C to stop", flush=True)
            while True:
                # Short naps, not one long sleep: a signal the kernel hands to another
                # thread (torch's, waitress's) does not cut short a sleep in this one.
                time.sleep(STOP_POLL_S)
        except KeyboardInterrupt:
            # A stop ends the process whatever the clean-up (leaving the `with`) does.
            exit_if_stop_hangs()
            print("stopped", file=sys.stderr)
            return 0
