"""`scones workflow definition|deploy|run` and `scones lambdas build`.

workflow run classifies images with the inference workflow (workflow.run): on the embedded
default through moto's engine and the local endpoint; on AWS by starting executions of the
deployed state machine. Either way, one result per image, shaped by the same code.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lambdas.build import LambdaBuildError, build_lambda_zips, code_sha256
from app.cli.common import command_group, common_options
from app.cli.infra import add_deploy_arguments
from scones.console import format_table
from scones.errors import SconesError
from workflow.run import images_from_options, run_workflow, summary, write_csv


BIG_FOLDER = 1000  # images above which `--images` suggests `--prefix`


class LambdaPackagingError(SconesError):
    """A Lambda module cannot be packaged (lambdas.build refused it)."""


def _build(out_dir: Path, keys=None) -> dict[str, Path]:
    try:
        return build_lambda_zips(out_dir, keys=keys)
    except LambdaBuildError as exc:
        raise LambdaPackagingError(str(exc)) from None


def cmd_definition(args, config) -> int:
    if args.bulk:
        from workflow.bulk import bulk_definition_json

        print(bulk_definition_json(config))
        return 0
    from workflow.definition import workflow_definition_json

    print(workflow_definition_json(config))
    return 0


def cmd_deploy(args, config) -> int:
    """The workflows are resources of the project's stack: deploying them is deploying it
    (infra.stack, the one path to AWS)."""
    from app.cli.infra import infra_deploy
    from scones.backend import backend_for

    backend_for(config).require_aws(
        "`scones workflow deploy` creates or updates the project's stack on AWS, the "
        "workflows with it: add --env aws (with configs/aws.yaml filled in). To run the "
        "workflow on this machine, use `scones workflow run`.")
    return infra_deploy(args, config)


def cmd_build(args, config) -> int:
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise SconesError(f"--out {args.out}: exists and is not a folder")
    zips = _build(out_dir)
    rows = [(key, path.stat().st_size, code_sha256(path)) for key, path in zips.items()]
    print(format_table(["function", "bytes", "CodeSha256"], rows))
    print(f"zips in {out_dir} (<function>.zip)")
    return 0


def register(subparsers) -> None:
    workflow = command_group(subparsers, "workflow",
                             "the Step Functions inference workflow (serialize, classify, filter)")
    parser = workflow.add_parser(
        "definition", parents=[common_options()],
        help="print the state machine definition (ASL JSON) as deployed")
    parser.add_argument("--bulk", action="store_true",
                        help="the bulk workflow's (Distributed Map over a prefix) instead")
    parser.set_defaults(func=cmd_definition)
    parser = workflow.add_parser(
        "deploy", parents=[common_options()],
        help="create or update the project's stack, the workflows' Lambdas and state "
             "machines with it (--env aws; as `scones infra deploy`)")
    add_deploy_arguments(parser)
    parser.set_defaults(func=cmd_deploy)
    run = workflow.add_parser(
        "run", parents=[common_options()],
        help="classify images with the inference workflow (one execution per image; "
             "--prefix: one bulk execution in batches)",
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
                     help="executions running at once (default: workflow.max_concurrency); "
                          "with --prefix, batches at once")
    run.add_argument("--endpoint-idle-minutes", type=float, default=10.0, metavar="MIN",
                     help="(local) use the running local endpoint, or leave the one this run "
                          "starts running in the background until idle this long (default "
                          "10; 0: use a running one only, never leave one)")
    run.add_argument("--batch-size", type=int, metavar="N",
                     help="(--prefix) images per batch of the bulk workflow (default 256)")
    run.add_argument("--tolerated-failures", type=float, metavar="PERCENT",
                     help="(--prefix) failed batches tolerated before the bulk run fails "
                          "(default 5)")
    output = run.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="one JSON object per image per line on stdout")
    output.add_argument("--csv", action="store_true",
                        help="CSV on stdout: a header, then one row per image")
    run.set_defaults(func=run_command)

    lambdas = command_group(subparsers, "lambdas", "the workflow's Lambda functions")
    parser = lambdas.add_parser(
        "build", parents=[common_options()],
        help="package each Lambda as a deterministic zip holding only what it imports")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the zips")
    parser.set_defaults(func=cmd_build)


def run_command(args, config) -> int:
    if args.concurrency is not None and args.concurrency < 1:
        raise SconesError(f"--concurrency must be at least 1, got {args.concurrency}")
    if (args.batch_size is not None or args.tolerated_failures is not None) and not args.prefix:
        raise SconesError("--batch-size and --tolerated-failures apply to --prefix (the bulk "
                          "workflow) only")
    if args.endpoint_idle_minutes < 0:
        raise SconesError(f"--endpoint-idle-minutes must be 0 or more, got "
                          f"{args.endpoint_idle_minutes:g}")
    keep_endpoint_s = 60.0 * args.endpoint_idle_minutes
    bulk = None
    if args.prefix:  # one execution of the bulk workflow (workflow/bulk.py)
        from workflow.bulk import run_bulk

        bulk = run_bulk(config, args.prefix, batch_size=args.batch_size,
                        tolerated_failure_percentage=args.tolerated_failures,
                        concurrency=args.concurrency, model_version=args.model_version,
                        keep_endpoint_s=keep_endpoint_s)
        results = bulk.results
    else:
        images = images_from_options(config, image=args.image, images=args.images, s3=args.s3)
        if args.images and len(images) > BIG_FOLDER:
            # one execution per image holds each one's history in the local engine: a big
            # folder is the bulk workflow's job (batches, a flat memory)
            print(f"note: {len(images)} images: for a folder this big `--prefix` is faster and "
                  f"lighter (the bulk workflow, in batches): copy them to s3://"
                  f"{config.aws.bucket}/incoming/ (on the embedded default the folder "
                  f"{config.local.workspace}/s3/{config.aws.bucket}/incoming/) and run "
                  f"`scones workflow run --prefix s3://{config.aws.bucket}/incoming/`",
                  file=sys.stderr)
        results = run_workflow(config, images, model_version=args.model_version,
                               concurrency=args.concurrency, keep_endpoint_s=keep_endpoint_s)
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
    if bulk is not None:
        from workflow.bulk import bulk_summary_lines

        for line in bulk_summary_lines(bulk):
            print(line, file=sys.stderr if args.json or args.csv else sys.stdout)
        if bulk.status != "SUCCEEDED":
            return 1
    return 1 if any(r.failed_otherwise for r in results) else 0
