"""`scones infra template|package|deploy`: the AWS infrastructure as CloudFormation, one
template (infra/project_template.py) deployed one way (infra/stack.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from app.cli.common import command_group, common_options


def register(subparsers) -> None:
    infra = command_group(subparsers, "infra", "the AWS infrastructure as CloudFormation")
    template = infra.add_parser(
        "template", parents=[common_options()],
        help="print (or write) the CloudFormation template",
        description="The SageMaker Project template: model build, model deploy (staging, "
                    "test, approval, prod), retraining, monitoring, the inference and bulk "
                    "workflows, their least-privilege roles.")
    template.add_argument("--out", metavar="FILE", help="write the template to FILE")
    template.set_defaults(func=_infra_template)
    deploy = infra.add_parser(
        "deploy", parents=[common_options()],
        help="create or update the project's CloudFormation stack (--env aws)",
        description="Packages the bundle (as `infra package`), uploads it and creates or "
                    "updates the stack from the template's S3 URL; waits until it is "
                    "complete. `scones workflow deploy` does the same.")
    add_deploy_arguments(deploy)
    deploy.set_defaults(func=infra_deploy)
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


def add_deploy_arguments(parser) -> None:
    parser.add_argument("--stack-name", metavar="NAME",
                        help="the stack (default <project name>-sagemaker-project)")
    parser.add_argument("--project-name", metavar="NAME",
                        help="SageMakerProjectName (default: the stack's, else `project`)")
    parser.add_argument("--project-id", metavar="ID",
                        help="SageMakerProjectId (default: the stack's; needed to create it)")
    parser.add_argument("--bucket", metavar="NAME",
                        help="bucket the bundle is uploaded to (default aws.bucket)")
    parser.add_argument("--no-source", action="store_true",
                        help="leave out source.zip (the model build reads a connection)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def infra_deploy(args, config) -> int:
    import json
    import tempfile

    from infra.stack import deploy_stack
    from scones.backend import backend_for

    backend = backend_for(config)
    project = args.project_name or config.project
    with tempfile.TemporaryDirectory(prefix="scones-stack-") as out_dir:
        result = deploy_stack(config, backend.client("cloudformation"), backend.client("s3"),
                              stack_name=args.stack_name or f"{project}-sagemaker-project",
                              project_name=args.project_name, project_id=args.project_id,
                              out_dir=out_dir, bucket=args.bucket,
                              with_source=not args.no_source)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"stack {result['stack']}: {result['action']} ({result['status']})")
    for key, value in sorted(result["outputs"].items()):
        print(f"  {key}: {value}")
    return 0


def _infra_template(args, config) -> int:
    from infra.project_template import template_json

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
