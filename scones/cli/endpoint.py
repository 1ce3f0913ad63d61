"""`scones endpoint deploy|status|serve`: which model version the endpoint serves, and the
local endpoint itself."""
from __future__ import annotations

import json
import sys
import time

from scones.backend import backend_for
from scones.cli.common import command_group, common_options
from scones.config import Config
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
    serve = endpoint.add_parser(
        "serve", parents=[common_options()],
        help="serve the deployed model on 127.0.0.1 until Ctrl-C",
        description="Serve the local endpoint: GET /ping, POST /invocations and the "
                    "SageMaker Runtime route POST /endpoints/NAME/invocations.")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    serve.add_argument("--model-version", type=int, metavar="N",
                       help="serve this registered version instead of the deployed one")
    serve.set_defaults(func=serve_command)


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


def serve_command(args, config: Config) -> int:
    backend_for(config).require_local(
        "`scones endpoint serve` runs the local endpoint; on AWS the endpoint is SageMaker's "
        "(`scones endpoint status --env aws`)")
    from workflow.endpoint import start_endpoint

    endpoint = start_endpoint(config, port=args.port, model_version=args.model_version)
    try:
        model = endpoint.model
        print(f"endpoint {endpoint.endpoint_name} serving model version "
              f"{model.version if model.version is not None else '?'} ({model.source}) at "
              f"{endpoint.url}", flush=True)
        print(f"  boto3: AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={endpoint.url}; "
              f"Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 0
    finally:
        endpoint.stop()
