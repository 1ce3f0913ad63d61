"""`scones infra template|package`: the AWS infrastructure as CloudFormation."""
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
    bundle = infra.add_parser(
        "package", parents=[common_options()],
        help="build the SageMaker Project stack's upload bundle (Lambda zips, source, "
             "template, parameters.json)",
        description="Writes into --out the workflow Lambdas' zips, the project's code as "
                    "the model build's S3 source, the SageMaker Project template and "
                    "parameters.json naming every parameter without a default. Upload the "
                    "files as uploads.json lists (--upload does it), then create the stack "
                    "from S3: aws cloudformation create-stack --template-url <template_url "
                    "in package.json> --parameters file://<out>/parameters.json "
                    "--capabilities CAPABILITY_IAM (the template is larger than "
                    "--template-body takes).")
    bundle.add_argument("--out", required=True, metavar="DIR", help="folder for the bundle")
    bundle.add_argument("--bucket", metavar="NAME",
                        help="bucket the bundle is uploaded to (default aws.bucket)")
    bundle.add_argument("--project-name", required=True, metavar="NAME",
                        help="SageMakerProjectName of the stack")
    bundle.add_argument("--project-id", required=True, metavar="ID",
                        help="SageMakerProjectId of the stack")
    bundle.add_argument("--no-source", action="store_true",
                        help="leave out source.zip (the model build reads a connection)")
    bundle.add_argument("--upload", action="store_true",
                        help="upload the bundle to --bucket (needs AWS credentials)")
    bundle.set_defaults(func=_infra_package)


def _infra_template(args, config) -> int:
    from infra.workflow_stack import template_json

    text = template_json(config)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _infra_package(args, config) -> int:
    from infra.package import package, upload
    from scones.backend import backend_for

    result = package(config, Path(args.out).expanduser(), bucket=args.bucket,
                     with_source=not args.no_source, project_name=args.project_name,
                     project_id=args.project_id)
    for url, path in result.uploads.items():
        print(f"{path} -> {url}")
    if args.upload:
        upload(result, backend_for(config).client("s3"))
        print(f"uploaded {len(result.uploads)} files to s3://{result.bucket}/")
    print(f"parameters: {result.out_dir / 'parameters.json'}")
    print(f"template:   {result.template_url}")
    return 0
