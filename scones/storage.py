"""The object store behind s3:// URLs.

Locally, `s3://bucket/key` is the file `<workspace>/s3/bucket/key`; on AWS it is S3.
Both sides speak URLs so the rest of the code does not care which one it has.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from scones.errors import StorageError

# The permission bits a plain open() would give a new file (mkstemp gives 0600).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def split_s3_url(url: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b'); anything else is a StorageError."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"not an s3:// URL: {url!r}")
    return parsed.netloc, parsed.path.lstrip("/")


class LocalObjectStore:
    """S3 as folders: <root>/<bucket>/<key>. A key that escapes its bucket is refused."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def path_for(self, url: str) -> Path:
        bucket, key = split_s3_url(url)
        if bucket in (".", "..") or "/" in bucket:
            raise StorageError(f"invalid bucket name in {url!r}")
        bucket_dir = (self.root / bucket).resolve()
        path = (bucket_dir / key).resolve()
        if path != bucket_dir and bucket_dir not in path.parents:
            raise StorageError(f"{url!r} escapes its bucket (key {key!r} leaves {bucket_dir})")
        return path

    def exists(self, url: str) -> bool:
        return self.path_for(url).exists()

    def read_bytes(self, url: str) -> bytes:
        path = self.path_for(url)
        if not path.is_file():
            raise StorageError(f"no object at {url} (looked for {path})")
        return path.read_bytes()

    def write_bytes(self, url: str, data: bytes) -> Path:
        path = self.path_for(url)
        _replace_atomically(path, lambda tmp: tmp.write_bytes(data))
        return path

    def upload_file(self, source: Path, url: str) -> Path:
        path = self.path_for(url)
        _replace_atomically(path, lambda tmp: shutil.copyfile(source, tmp))
        return path

    def list_urls(self, prefix_url: str) -> list[str]:
        """Every object under a prefix, as s3:// URLs, sorted."""
        bucket, prefix = split_s3_url(prefix_url)
        base = self.path_for(f"s3://{bucket}/")
        start = self.path_for(prefix_url)
        candidates = [start] if start.is_file() else []
        search_root = start if start.is_dir() else start.parent
        if search_root.is_dir():
            candidates += [p for p in search_root.rglob("*") if p.is_file()]
        urls = set()
        for path in candidates:
            key = path.relative_to(base).as_posix()
            if key.startswith(prefix) and not path.name.startswith("."):
                urls.add(f"s3://{bucket}/{key}")
        return sorted(urls)


def _replace_atomically(path: Path, fill: Callable[[Path], object]) -> None:
    """Write `path` through a temporary file of its own in the same folder, then rename it
    over the target: readers never see half an object, and two writers of one key (each
    with a unique temporary name) never trip over each other - the last rename wins."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fill(tmp)
        os.chmod(tmp, _FILE_MODE)
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


class S3ObjectStore:
    """LocalObjectStore's reading and writing, on S3 through a boto3 client."""

    def __init__(self, s3_client):
        self.client = s3_client

    def read_bytes(self, url: str) -> bytes:
        bucket, key = split_s3_url(url)
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def write_bytes(self, url: str, data: bytes) -> None:
        bucket, key = split_s3_url(url)
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def list_urls(self, prefix_url: str) -> list[str]:
        """Every object under a prefix, as s3:// URLs, sorted (folder markers left out)."""
        bucket, prefix = split_s3_url(prefix_url)
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix)
        return sorted(f"s3://{bucket}/{o['Key']}" for page in pages
                      for o in page.get("Contents", []) if not o["Key"].endswith("/"))

