"""Data snapshots: every training set is an immutable, content-addressed copy of its images.

A snapshot is a folder in the project's bucket,

    s3://<bucket>/data/snapshots/<id>/manifest.json
    s3://<bucket>/data/snapshots/<id>/<class>/<file>          (the images, as listed)

whose <id> is the SHA-256 of its file list: the (path, SHA-256 of the content) pairs, sorted.
The same images give the same id; one changed byte gives another id, so another URL. That is
what makes the pipeline's step cache right on both backends: SageMaker's cache keys on a
step's arguments (the InputDataUrl), not on the data behind it, so a new snapshot misses the
cache on SageMaker exactly as it does in the local runner. Nothing under a snapshot's prefix
is ever rewritten; preprocess.py checks each file against the manifest's hashes.

The manifest also says where the snapshot came from (`source`), its `parent` snapshot (the
one it extends, for retraining) and when it was made; those are not part of the id, so
building an existing snapshot again returns the first one unchanged.

Built through the object-store interface (scones.storage), so the same code writes the local
twin's folders and S3.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from scones.errors import SconesError
from scones.storage import split_s3_url

SNAPSHOTS_PREFIX = "data/snapshots"
MANIFEST = "manifest.json"
FORMAT = "scones-data-snapshot/1"
_ID = re.compile(r"^[0-9a-f]{64}$")
_SNAPSHOT_URL = re.compile(r"^s3://[^/]+/" + SNAPSHOTS_PREFIX + r"/([0-9a-f]{64})/?(?:"
                           + re.escape(MANIFEST) + r")?$")


class SnapshotError(SconesError):
    """No data where a snapshot should come from, or a manifest that is not one."""


@dataclass(frozen=True)
class Snapshot:
    url: str            # s3://bucket/data/snapshots/<id>/ : what InputDataUrl names
    manifest: dict

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def files(self) -> list[dict]:
        return self.manifest["files"]

    @property
    def parent(self) -> str | None:
        return self.manifest.get("parent")

    @property
    def created(self) -> str:
        return self.manifest.get("created", "")

    @property
    def hashes(self) -> set[str]:
        return {entry["sha256"] for entry in self.files}

    def counts(self) -> dict[str, int]:
        """Files per top-level folder (per class, for an image-folder data set)."""
        counts: dict[str, int] = {}
        for entry in self.files:
            folder = entry["path"].split("/", 1)[0] if "/" in entry["path"] else "."
            counts[folder] = counts.get(folder, 0) + 1
        return dict(sorted(counts.items()))


def snapshots_url(bucket: str) -> str:
    return f"s3://{bucket}/{SNAPSHOTS_PREFIX}/"


def snapshot_url(bucket: str, snapshot_id: str) -> str:
    return f"{snapshots_url(bucket)}{snapshot_id}/"


def is_snapshot_url(url: str | None) -> bool:
    return bool(url) and _SNAPSHOT_URL.match(url) is not None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot_id(files: Iterable[dict]) -> str:
    """The id of a file list: SHA-256 of its sorted (path, sha256) pairs as compact JSON."""
    pairs = sorted([entry["path"], entry["sha256"]] for entry in files)
    return sha256(json.dumps(pairs, separators=(",", ":")).encode())


def _check_path(path: str) -> str:
    parts = path.split("/")
    if (not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts)
            or path == MANIFEST):
        raise SnapshotError(f"{path!r} cannot be a file of a snapshot (a relative path "
                            f"inside it, not {MANIFEST})")
    return path


def create_snapshot(store, bucket: str, files: Iterable[tuple[str, bytes]],
                    parent: str | None = None, source: str = "") -> Snapshot:
    """A snapshot of (relative path, content) pairs. Identical contents are kept once (the
    first path in name order); an existing snapshot with the same files is returned as is."""
    chosen: dict[str, tuple[str, bytes]] = {}
    for path, data in sorted(files, key=lambda item: item[0]):
        digest = sha256(data)
        chosen.setdefault(digest, (_check_path(path), data))
    if not chosen:
        raise SnapshotError(f"no files to snapshot from {source or 'the input'}")
    entries = sorted(({"path": path, "sha256": digest, "size": len(data)}
                      for digest, (path, data) in chosen.items()), key=lambda e: e["path"])
    if len({e["path"] for e in entries}) != len(entries):
        raise SnapshotError("two different files share a path; paths must be unique")
    new_id = snapshot_id(entries)
    url = snapshot_url(bucket, new_id)
    existing = _read_manifest(store, url + MANIFEST, missing_ok=True)
    if existing is not None:
        return Snapshot(url, existing)
    for digest, (path, data) in chosen.items():
        store.write_bytes(url + path, data)
    manifest = {"format": FORMAT, "id": new_id, "parent": parent, "source": source,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "files": entries}
    # the manifest last: a snapshot whose writing was cut short has none and is never listed
    store.write_bytes(url + MANIFEST, json.dumps(manifest, indent=1).encode())
    return Snapshot(url, manifest)


def read_source_files(store, source: str) -> list[tuple[str, bytes]]:
    """(path relative to source, bytes) of every file under a local folder or s3:// prefix;
    hidden files and a top-level manifest.json (a snapshot copied back) are left out."""
    if source.startswith("s3://"):
        prefix = source if source.endswith("/") else source + "/"
        files = [(url[len(prefix):], url) for url in store.list_urls(prefix)]
        read = store.read_bytes
    else:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise SnapshotError(f"{root} is not a folder: give a folder of images "
                                "(one subfolder per class) or an s3:// prefix")
        files = [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*"))
                 if p.is_file()]
        read = lambda p: p.read_bytes()  # noqa: E731
    return [(path, read(where)) for path, where in files
            if path != MANIFEST and not any(part.startswith(".") for part in path.split("/"))]


def snapshot_source(store, bucket: str, source: str) -> Snapshot:
    """The snapshot of a folder or s3:// prefix (a snapshot URL is returned as it is)."""
    if is_snapshot_url(source):
        return load_snapshot(store, source)
    files = read_source_files(store, source)
    if not files:
        raise SnapshotError(f"{source} holds no files to snapshot")
    return create_snapshot(store, bucket, files, source=source)


def extend_snapshot(store, bucket: str, base: Snapshot, additions: Iterable[tuple[str, bytes]]
                    ) -> Snapshot:
    """`base` plus new files, as a new snapshot whose parent is `base` (de-duplicated by
    content: a file already in `base` is not added again)."""
    files = [(entry["path"], store.read_bytes(base.url + entry["path"])) for entry in base.files]
    have = base.hashes
    new = [(path, data) for path, data in additions if sha256(data) not in have]
    if not new:
        return base
    return create_snapshot(store, bucket, files + new, parent=base.url,
                           source=f"{base.url} + {len(new)} new file(s)")


def _read_manifest(store, url: str, missing_ok: bool = False) -> dict | None:
    try:
        raw = store.read_bytes(url)
    except SconesError:
        if missing_ok:
            return None
        raise SnapshotError(f"no snapshot manifest at {url}") from None
    except Exception as exc:  # botocore's NoSuchKey on S3
        if missing_ok and "NoSuchKey" in type(exc).__name__ + str(exc):
            return None
        raise
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise SnapshotError(f"{url} is not JSON: not a snapshot manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or not isinstance(manifest.get("files"), list):
        raise SnapshotError(f"{url} is not a {FORMAT} manifest")
    return manifest


def load_snapshot(store, url: str) -> Snapshot:
    """The snapshot at a snapshot URL (its folder or its manifest.json). The id is checked
    against the files listed, so a manifest edited in place is refused."""
    match = _SNAPSHOT_URL.match(url or "")
    if not match:
        raise SnapshotError(f"{url!r} is not a snapshot URL (s3://BUCKET/{SNAPSHOTS_PREFIX}/"
                            "<sha256>/)")
    bucket, _ = split_s3_url(url)
    folder = snapshot_url(bucket, match.group(1))
    manifest = _read_manifest(store, folder + MANIFEST)
    if manifest.get("id") != match.group(1) or snapshot_id(manifest["files"]) != match.group(1):
        raise SnapshotError(f"{folder}{MANIFEST} does not list the files its id names: the "
                            "snapshot was altered; build a new one")
    return Snapshot(folder, manifest)


def list_snapshots(store, bucket: str) -> list[Snapshot]:
    """Every complete snapshot in the bucket, oldest first."""
    found = []
    for url in store.list_urls(snapshots_url(bucket)):
        match = _SNAPSHOT_URL.match(url)
        if match and url.endswith("/" + MANIFEST):
            try:
                found.append(load_snapshot(store, url))
            except SnapshotError:
                continue  # an altered snapshot is never offered as the newest
    return sorted(found, key=lambda s: (s.created, s.id))


def newest_snapshot(store, bucket: str) -> Snapshot:
    """The most recently created snapshot; SnapshotError saying how to make one if none."""
    snapshots = list_snapshots(store, bucket)
    if not snapshots:
        raise SnapshotError(
            f"no data snapshot under {snapshots_url(bucket)}: the training data is taken "
            f"from the newest one there. Make one with `scones data snapshot FOLDER|s3://PREFIX`"
            " (a folder per class), or pass the data's URL (input_data_url / InputDataUrl)")
    return snapshots[-1]
