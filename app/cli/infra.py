"""`scones infra template`: the AWS infrastructure as CloudFormation."""
from __future__ import annotations

import sys
from pathlib import Path

from app.cli.common import command_group, common_options


def register(subparsers) -> None:
    infra = command_group(subparsers, "infra", "the AWS infrastructure as CloudFormation")
    template = infra.add_parser(
        "template", parents=[common_options()],
        help="print (or write) the CloudFormation template",
        description="The CloudFormation template for the workflow's Lambdas, the state "
                    "machine, the approval -> deploy rule, the new-image rule and their "
                    "least-privilege roles.")
    template.add_argument("--out", metavar="FILE", help="write the template to FILE")
    template.set_defaults(func=_infra_template)


def _infra_template(args, config) -> int:
    from infra.workflow_stack import template_json

    text = template_json(config)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
