"""`scones data snapshot|list`: the training data as immutable snapshots (scones/snapshots.py).

A snapshot is what the pipeline's InputDataUrl names: a new snapshot is a new URL, so the
step cache is right on SageMaker (which keys on the URL) as it is locally. `list` shows each
snapshot, the one it extends and the model versions that learnt from it.
"""
from __future__ import annotations

from app.cli.common import command_group, common_options
from app.retraining import lineage
from scones.backend import backend_for
from scones.console import format_table, print_json
from scones.snapshots import list_snapshots, snapshot_source


def register(subparsers) -> None:
    group = command_group(subparsers, "data", "training data snapshots and their lineage")
    snapshot = group.add_parser(
        "snapshot", parents=[common_options()],
        help="snapshot a folder or s3:// prefix of images (one subfolder per class)",
        description="Copy the files of a folder or s3:// prefix into an immutable snapshot, "
                    "s3://BUCKET/data/snapshots/<sha256>/ with manifest.json listing every "
                    "file's SHA-256, and print its URL (the pipeline's InputDataUrl). The same "
                    "files give the same snapshot; nothing is copied twice.")
    snapshot.add_argument("source", metavar="FOLDER|s3://prefix")
    snapshot.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    snapshot.set_defaults(func=_snapshot)

    listing = group.add_parser(
        "list", parents=[common_options()],
        help="list the data snapshots, their parents and the versions trained on them")
    listing.add_argument("--json", action="store_true", help="print JSON on stdout")
    listing.set_defaults(func=_list)


def _describe(snapshot, versions: list[int]) -> dict:
    return {"DataSnapshotUrl": snapshot.url, "SnapshotId": snapshot.id,
            "ParentDataSnapshotUrl": snapshot.parent, "CreationTime": snapshot.created,
            "Source": snapshot.manifest.get("source"), "Files": len(snapshot.files),
            "Counts": snapshot.counts(), "ModelPackageVersions": versions}


def _snapshot(args, config) -> int:
    snapshot = snapshot_source(backend_for(config).object_store(), config.aws.bucket,
                               args.source)
    if args.json:
        print_json(_describe(snapshot, []))
        return 0
    counts = ", ".join(f"{name} {n}" for name, n in snapshot.counts().items())
    print(f"snapshot {snapshot.url}\n{len(snapshot.files)} files ({counts})")
    print(f"train on it: scones pipeline run --param InputDataUrl={snapshot.url}")
    return 0


def _list(args, config) -> int:
    backend = backend_for(config)
    trained: dict[str, list[int]] = {}
    for package in backend.registry().list_packages():
        url, _ = lineage(package)
        if url:
            trained.setdefault(url, []).append(package["ModelPackageVersion"])
    snapshots = [_describe(s, trained.get(s.url, []))
                 for s in list_snapshots(backend.object_store(), config.aws.bucket)]
    if args.json:
        print_json(snapshots)
        return 0
    if not snapshots:
        print(f"no data snapshots in s3://{config.aws.bucket}/data/snapshots/ yet "
              "(scones data snapshot FOLDER)")
        return 0
    print(format_table(
        ["SNAPSHOT", "PARENT", "CREATED", "FILES", "PER CLASS", "VERSIONS"],
        [(s["SnapshotId"][:12], (s["ParentDataSnapshotUrl"] or "-").rstrip("/")[-64:][:12],
          s["CreationTime"], s["Files"],
          " ".join(f"{k} {v}" for k, v in s["Counts"].items()),
          ",".join(map(str, s["ModelPackageVersions"])) or "-") for s in snapshots]))
    return 0
