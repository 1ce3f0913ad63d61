"""`scones registry list|show|approve|reject`: the model registry from the command line.

Approving locally also deploys the version to the staging endpoint, which on AWS is the
EventBridge rule's job (model package state change -> the deploy state machine / Lambda);
`scones endpoint test` and `scones endpoint promote` take it on to prod.
"""
from __future__ import annotations

import json
import sys

from app.cli.common import command_group, common_options
from scones.console import format_table
from scones.backend import backend_for
from scones.registry import (DATA_SNAPSHOT_PROPERTY, OOD_THRESHOLD_PROPERTY,
                             PARENT_SNAPSHOT_PROPERTY, jsonable)


def register(subparsers) -> None:
    group = command_group(subparsers, "registry",
                          "the model registry: registered versions and their approval")
    listing = group.add_parser("list", parents=[common_options()],
                               help="list the registered versions of the model package group")
    listing.add_argument("--json", action="store_true", help="print JSON on stdout")
    listing.set_defaults(func=list_command)

    show = group.add_parser("show", parents=[common_options()],
                            help="describe one version (DescribeModelPackage + accuracy)")
    show.add_argument("version", help="the model package version number")
    show.add_argument("--json", action="store_true", help="print JSON on stdout")
    show.set_defaults(func=show_command)

    approve = group.add_parser("approve", parents=[common_options()],
                               help="approve a version (locally: and deploy it to staging)")
    approve.add_argument("version", help="the model package version number")
    approve.add_argument("--description", help="why it is approved (ApprovalDescription)")
    approve.add_argument("--deploy", action="store_true",
                         help="deploy it to staging even if staging serves a newer version "
                              "(a rollback); without it an older version is only approved")
    approve.set_defaults(func=approve_command)

    reject = group.add_parser("reject", parents=[common_options()],
                              help="reject a version, saying why")
    reject.add_argument("version", help="the model package version number")
    reject.add_argument("--description", required=True,
                        help="why it is rejected (required, like SageMaker Studio asks)")
    reject.add_argument("--undeploy", action="store_true",
                        help="if a stage serves it, roll that stage back to the newest other "
                             "Approved version (without it: a warning, it keeps serving)")
    reject.set_defaults(func=reject_command)


def _accuracy(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def list_command(args, config) -> int:
    packages = backend_for(config).registry().list_packages()
    if args.json:
        print(json.dumps(jsonable(packages)))
        return 0
    if not packages:
        print(f"no versions registered in {config.pipeline.model_package_group} yet "
              "(run the pipeline: scones pipeline run)")
        return 0
    print(format_table(
        ["VERSION", "STATUS", "ACCURACY", "CREATED", "MODEL"],
        [(p["ModelPackageVersion"], p["ModelApprovalStatus"], _accuracy(p.get("Accuracy")),
          jsonable(p["CreationTime"]), p.get("ModelDataUrl")) for p in packages]))
    return 0


SHOWN_FIELDS = ("ModelPackageGroupName", "ModelPackageVersion", "ModelPackageArn",
                "ModelPackageStatus", "ModelApprovalStatus", "ApprovalDescription",
                "ModelPackageDescription", "CreationTime", "LastModifiedTime", "Accuracy",
                "ModelDataUrl", "LocalModelData")


def show_command(args, config) -> int:
    package = backend_for(config).registry().describe(args.version)
    if args.json:
        print(json.dumps(jsonable(package)))
        return 0
    for key in SHOWN_FIELDS:
        if key in package:
            value = _accuracy(package[key]) if key == "Accuracy" else jsonable(package[key])
            print(f"{key + ':':<26} {'' if value is None else value}")
    container = (package.get("InferenceSpecification") or {}).get("Containers", [{}])[0]
    print(f"{'Image:':<26} {container.get('Image', '')}")
    # lineage (the data snapshot this version learnt from and the one that snapshot extends)
    # and its "not a vehicle" threshold
    properties = package.get("CustomerMetadataProperties") or {}
    for key in (DATA_SNAPSHOT_PROPERTY, PARENT_SNAPSHOT_PROPERTY, OOD_THRESHOLD_PROPERTY):
        print(f"{key + ':':<26} {properties.get(key) or '(not recorded)'}")
    return 0


def approve_command(args, config) -> int:
    from workflow.stages import approve_and_deploy

    package, changed, deployment = approve_and_deploy(config, args.version, args.description,
                                                      deploy_older=args.deploy)
    version = package["ModelPackageVersion"]
    if not changed:
        print(f"version {version} is already Approved; nothing changed")
        return 0
    print(f"version {version} of {package['ModelPackageGroupName']}: Approved")
    if deployment is None:
        print("the EventBridge rule deploys it to staging (then the staging test, your "
              "approval, and prod)")
    elif deployment.get("Action") == "skipped":
        print(f"not deployed: {deployment['Reason']}")
    else:
        print(f"staging endpoint {deployment['EndpointName']}: "
              f"{deployment.get('Action', 'deployed')} with version {version}; next: "
              "`scones endpoint test --stage staging`, then `scones endpoint promote`")
    return 0


def reject_command(args, config) -> int:
    from workflow.stages import reject_and_report

    package, changed, messages = reject_and_report(config, args.version, args.description,
                                                   undeploy=args.undeploy)
    state = "Rejected" if changed else "already Rejected; nothing changed"
    print(f"version {package['ModelPackageVersion']} of {package['ModelPackageGroupName']}: "
          f"{state}")
    for message in messages:
        print(message, file=sys.stderr if message.startswith("warning") else sys.stdout)
    return 0
