"""`scones endpoint deploy|status`, `scones monitor report`, `scones infra template`.

Operations on what runs after a model is approved: which version the endpoint serves, what
traffic it saw (data capture), and the AWS infrastructure that does both on AWS.
Heavy modules (matplotlib, the SDKs) are imported inside the handlers so `scones --help`
stays fast.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from scones.cli.common import command_group, common_options
from scones.console import format_table


def register(subparsers) -> None:
    endpoint = command_group(subparsers, "endpoint", "the inference endpoint: serve, deploy, status")
    deploy = endpoint.add_parser(
        "deploy", parents=[common_options()],
        help="deploy an Approved model version to the endpoint (an older one = rollback)",
        description="Deploy an Approved registered version to the endpoint with data capture: "
                    "locally the endpoint state file the local server follows, on AWS "
                    "(--env aws) a SageMaker model, endpoint config and endpoint.")
    deploy.add_argument("--version", required=True, metavar="N",
                        help="model package version to deploy")
    deploy.add_argument("--json", action="store_true", help="print the result as JSON")
    deploy.set_defaults(func=_deploy)

    status = endpoint.add_parser("status", parents=[common_options()],
                                 help="which model version the endpoint serves",
                                 description="Which model version the endpoint serves, its "
                                             "status, data capture and earlier deployments.")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_status)

    monitor = command_group(subparsers, "monitor", "monitoring of the endpoint's traffic")
    report = monitor.add_parser(
        "report", parents=[common_options()],
        help="summarise data-capture records into a report with plots",
        description="Read the endpoint's data-capture records (SageMaker's JSON Lines layout) "
                    "and write a markdown report with confidence plots.")
    report.add_argument("--since", metavar="WHEN",
                        help="only records from then on: ISO 8601 time or an age like 30m, "
                             "2h, 1d")
    report.add_argument("--source", metavar="DIR|s3://...",
                        help="folder or s3:// prefix holding the capture files "
                             "(default: the endpoint's capture destination)")
    report.add_argument("--out", metavar="DIR",
                        help="report folder (default: <workspace>/reports/monitor-<time>/)")
    report.add_argument("--json", action="store_true", help="print the summary as JSON")
    report.set_defaults(func=_monitor_report)

    infra = command_group(subparsers, "infra", "the AWS infrastructure as CloudFormation")
    template = infra.add_parser(
        "template", parents=[common_options()],
        help="print (or write) the CloudFormation template",
        description="The CloudFormation template for the workflow's Lambdas, the state "
                    "machine, the approval -> deploy rule, the new-image rule and their "
                    "least-privilege roles.")
    template.add_argument("--out", metavar="FILE", help="write the template to FILE")
    template.set_defaults(func=_infra_template)


def _deploy(args, config) -> int:
    from workflow.deployment import deploy_model_package

    result = deploy_model_package(config, args.version)
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    print(f"{result['Action']} endpoint {result['EndpointName']}: serving version "
          f"{result['ModelPackageVersion']} ({result['ModelPackageArn']})")
    if result.get("PreviousEndpointConfigName"):
        print(f"previous endpoint config: {result['PreviousEndpointConfigName']}")
    capture = result["DataCaptureConfig"]
    print(f"data capture: {capture['InitialSamplingPercentage']}% to "
          f"{capture['DestinationS3Uri']}")
    return 0


def _status(args, config) -> int:
    from workflow.deployment import endpoint_status

    status = endpoint_status(config)
    if args.json:
        print(json.dumps(status, default=str))
        return 0
    if status["EndpointStatus"] == "NotDeployed":
        print(f"endpoint {status['EndpointName']}: not deployed "
              "(approve a version: `scones registry approve N`, or `scones endpoint deploy "
              "--version N`)")
        return 0
    print(f"endpoint {status['EndpointName']}: {status['EndpointStatus']}, serving version "
          f"{status['ModelPackageVersion']}")
    for key in ("ModelPackageArn", "EndpointConfigName", "LastModifiedTime", "LocalModelData"):
        if status.get(key):
            print(f"  {key}: {status[key]}")
    capture = status.get("DataCaptureConfig") or {}
    if capture:
        percentage = capture.get("InitialSamplingPercentage",
                                 capture.get("CurrentSamplingPercentage"))
        print(f"  data capture: {'on' if capture.get('EnableCapture') else 'off'}, "
              f"{percentage}% to {capture.get('DestinationS3Uri')}")
    history = status.get("History") or []
    if history:
        print("earlier deployments (newest last):")
        print(format_table(["version", "deployed", "endpoint config"],
                           [(h.get("ModelPackageVersion"), h.get("LastModifiedTime"),
                             h.get("EndpointConfigName")) for h in history]))
    return 0


def _monitor_report(args, config) -> int:
    from workflow.monitoring import build_report, format_summary

    report = build_report(config, source=args.source, since=args.since,
                          out_dir=Path(args.out) if args.out else None)
    if args.json:
        print(json.dumps({**report.summary, "report": str(report.markdown_path)}))
    else:
        print(format_summary(report.summary))
        print(f"report: {report.markdown_path}")
    if report.summary["malformed"]:
        print(f"warning: {report.summary['malformed']} malformed capture line(s) skipped; "
              f"listed in {report.markdown_path}", file=sys.stderr)
    return 0


def _infra_template(args, config) -> int:
    from workflow.infra import template_json

    text = template_json(config)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
