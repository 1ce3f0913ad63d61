"""`scones workflow run` and `scones endpoint serve`.

workflow run classifies images with the inference workflow (workflow.run): on the embedded
default through moto's engine and the local endpoint; on AWS by starting executions of the
deployed state machine. Either way, one result per image, shaped by the same code.
"""
from __future__ import annotations

import json
import sys
import time

from scones.backend import backend_for
from scones.cli.common import command_group, common_options
from scones.config import Config
from scones.errors import SconesError
from workflow.run import images_from_options, run_workflow, summary, write_csv


def register(subparsers) -> None:
    workflow = command_group(subparsers, "workflow", "the Step Functions inference workflow")
    run = workflow.add_parser(
        "run", parents=[common_options()],
        help="classify images with the inference workflow (one execution per image)",
        description="Classify images with the inference workflow: serialize -> classify "
                    "(SageMaker endpoint) -> filter (confidence threshold). Locally the "
                    "same ASL runs in moto's Step Functions engine against the local endpoint.")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", metavar="PATH", help="one image file")
    source.add_argument("--images", metavar="DIR", help="every file under a folder")
    source.add_argument("--s3", metavar="URL", help="one object, s3://bucket/key")
    source.add_argument("--prefix", metavar="URL", help="every object under s3://bucket/prefix")
    run.add_argument("--model-version", type=int, metavar="N",
                     help="(local) serve this registered model version instead of the "
                          "deployed one")
    run.add_argument("--concurrency", type=int, metavar="N",
                     help="executions running at once (default: workflow.max_concurrency)")
    output = run.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="one JSON object per image per line on stdout")
    output.add_argument("--csv", action="store_true",
                        help="CSV on stdout: a header, then one row per image")
    run.set_defaults(func=run_command)

    endpoint = command_group(subparsers, "endpoint", "the SageMaker endpoint (local or AWS)")
    serve = endpoint.add_parser(
        "serve", parents=[common_options()],
        help="serve the deployed model on 127.0.0.1 until Ctrl-C",
        description="Serve the local endpoint: GET /ping, POST /invocations and the "
                    "SageMaker Runtime route POST /endpoints/NAME/invocations.")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    serve.add_argument("--model-version", type=int, metavar="N",
                       help="serve this registered version instead of the deployed one")
    serve.set_defaults(func=serve_command)


def run_command(args, config: Config) -> int:
    if args.concurrency is not None and args.concurrency < 1:
        raise SconesError(f"--concurrency must be at least 1, got {args.concurrency}")
    images = images_from_options(config, image=args.image, images=args.images, s3=args.s3,
                                 prefix=args.prefix)
    results = run_workflow(config, images, model_version=args.model_version,
                           concurrency=args.concurrency)
    if args.json:
        for result in results:
            print(json.dumps(result.to_dict()))
    elif args.csv:
        write_csv(results, sys.stdout)
    else:
        for result in results:
            print(result.line())
        print()
        print(summary(results))
    return 1 if any(r.failed_otherwise for r in results) else 0


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
