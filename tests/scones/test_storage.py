"""The local object store's writes: atomic, and safe for two processes writing one key."""
from __future__ import annotations

import multiprocessing
import os

import pytest

from scones.errors import StorageError
from scones.storage import LocalObjectStore

URL = "s3://bucket/models/shared/model.tar.gz"


def _write_many(root: str, marker: bytes, count: int, upload_from: str | None, queue) -> None:
    store = LocalObjectStore(root)
    errors = []
    for index in range(count):
        try:
            if upload_from and index % 2:
                store.upload_file(upload_from, URL)
            else:
                store.write_bytes(URL, marker * 4096)
        except Exception as exc:  # reported to the parent, which fails the test
            errors.append(f"{type(exc).__name__}: {exc}")
    queue.put(errors)


def test_two_processes_writing_one_key_never_fail_and_leave_one_whole_object(tmp_path):
    source = tmp_path / "upload.bin"
    source.write_bytes(b"u" * 4096)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    writers = [context.Process(target=_write_many,
                               args=(str(tmp_path / "s3"), marker, 300, str(source), queue))
               for marker in (b"a", b"b")]
    for writer in writers:
        writer.start()
    errors = [queue.get(timeout=120) for _ in writers]
    for writer in writers:
        writer.join(60)
    assert errors == [[], []]
    store = LocalObjectStore(tmp_path / "s3")
    data = store.read_bytes(URL)
    assert len(data) == 4096 and len(set(data)) == 1  # one writer's whole object
    leftovers = [p.name for p in store.path_for(URL).parent.iterdir()]
    assert leftovers == ["model.tar.gz"]  # no temporary file left behind


def test_a_new_object_has_the_permissions_of_an_ordinary_file(tmp_path):
    path = LocalObjectStore(tmp_path).write_bytes("s3://b/k", b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_store_is_a_named_error_and_leaves_nothing(tmp_path):
    store = LocalObjectStore(tmp_path)
    store.write_bytes("s3://b/k/old", b"x")
    folder = store.path_for("s3://b/k/old").parent
    folder.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="cannot write .*old.*Permission denied"):
            store.write_bytes("s3://b/k/old", b"new")
    finally:
        folder.chmod(0o700)
    assert store.read_bytes("s3://b/k/old") == b"x"
