"""`scones workflow run` and `scones endpoint serve`.

workflow run classifies images with the inference workflow: on the embedded default
(env local) through workflow.local_run; on AWS (env aws) by starting executions of the
deployed state machine. Either way, one result per image, shaped by the same code.
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter

from pipelines.cli_common import command_group, common_options, format_table
from pipelines.config import Config
from pipelines.errors import SconesError
from workflow.local_run import (
    ImageResult,
    ImageSource,
    execution_input,
    images_from_options,
    run_executions,
    run_workflow_locally,
    stage_images,
)

AWS_POLL_INTERVAL_S = 1.0


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
    run.add_argument("--json", action="store_true",
                     help="one JSON object per image per line on stdout")
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
    if config.is_local:
        results = run_workflow_locally(config, images, model_version=args.model_version,
                                       concurrency=args.concurrency)
    else:
        if args.model_version is not None:
            raise SconesError("--model-version chooses the local endpoint's model; on AWS the "
                              "endpoint serves the deployed version (`scones endpoint deploy`)")
        results = run_workflow_on_aws(config, images, concurrency=args.concurrency)
    if args.json:
        for result in results:
            print(json.dumps(result.to_dict()))
    else:
        print(summary(results))
    return 1 if any(r.failed_otherwise for r in results) else 0


def run_workflow_on_aws(config: Config, images: list[ImageSource],
                        concurrency: int | None = None, progress: bool = True
                        ) -> list[ImageResult]:
    """Executions of the deployed state machine, one per image (local files are uploaded
    to s3://<aws.bucket>/workflow-input/<run>/ first)."""
    import boto3

    session = boto3.Session(region_name=config.aws.region)
    account = session.client("sts").get_caller_identity()["Account"]
    machine_arn = (f"arn:{session.get_partition_for_region(config.aws.region)}:states:"
                   f"{config.aws.region}:{account}:stateMachine:"
                   f"{config.workflow.state_machine_name}")
    sfn = session.client("stepfunctions")
    try:
        sfn.describe_state_machine(stateMachineArn=machine_arn)
    except sfn.exceptions.StateMachineDoesNotExist:
        raise SconesError(f"state machine {machine_arn} does not exist: deploy it with "
                          "`scones workflow deploy --env aws`") from None
    run_id = uuid.uuid4().hex[:12]
    located = stage_images(config, images, session.client("s3"), run_id, read_s3_locally=False)
    return run_executions(sfn, machine_arn, [execution_input(b, k) for b, k in located],
                          [i.label for i in images], config.classes,
                          concurrency=concurrency or config.workflow.max_concurrency,
                          poll_interval=AWS_POLL_INTERVAL_S, progress=progress, run_id=run_id)


def summary(results: list[ImageResult]) -> str:
    """Per predicted class, met / not met; failures by error name; the failed images."""
    met = Counter(r.predicted_label for r in results if r.status == "SUCCEEDED")
    not_met = Counter(r.predicted_label for r in results if r.meets_threshold is False)
    failed = [r for r in results if r.failed_otherwise]
    labels = sorted(set(met) | set(not_met), key=str)
    lines = [f"{len(results)} image(s): {sum(met.values())} met the confidence threshold, "
             f"{sum(not_met.values())} below it, {len(failed)} failed", ""]
    if labels:
        lines += [format_table(["predicted label", "met", "not met"],
                               [[label, met[label], not_met[label]] for label in labels]), ""]
    if failed:
        errors = Counter(r.error or r.status for r in failed)
        lines += [format_table(["error", "images"], sorted(errors.items())), ""]
        lines += ["failed images:"]
        lines += [f"  {r.image}: {r.error or r.status}: {r.cause or ''}" for r in failed]
    return "\n".join(lines).rstrip()


def serve_command(args, config: Config) -> int:
    if not config.is_local:
        raise SconesError("`scones endpoint serve` runs the local endpoint; on AWS the "
                          "endpoint is SageMaker's (`scones endpoint status --env aws`)")
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
