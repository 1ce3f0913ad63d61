"""`run-pipeline`: the SageMaker project template's command. Creates or updates the pipeline,
starts an execution and waits for it, printing each step's status. With --env local it runs
the same definition on this machine with the local runner instead."""
from __future__ import annotations

import dataclasses
import sys

from pipelines.executors import pipeline_executor
from scones.backend import backend_for
from app.cli.template import pipeline_from_args, run_template_cli, template_parser


def _parser():
    parser = template_parser("run-pipeline", "Upsert and run the model-build pipeline.")
    parser.add_argument("-role-arn", "--role-arn", default=None,
                        help="role the pipeline runs as (default: aws.role_arn of the config)")
    parser.add_argument("-description", "--description", default=None)
    parser.add_argument("--no-wait", action="store_true", help="start it and return")
    return parser


def _body(args) -> int:
    module, config = pipeline_from_args(args)
    if args.role_arn:
        config = config.replace(aws=dataclasses.replace(config.aws, role_arn=args.role_arn))
    result = pipeline_executor(backend_for(config)).run(
        factory=module.get_pipeline, wait=not args.no_wait, description=args.description,
        tags=config.pipeline.resource_tags() or None)
    print(f"execution {result['ExecutionArn']}: {result['Status']}")
    if result.get("FailureReason"):
        print(f"failure reason: {result['FailureReason']}")
    return 0 if result["Status"] in ("Succeeded", "Executing") else 1


def main(argv=None) -> int:
    return run_template_cli(_body, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
