"""Moving data in and out of a step: inputs copied from the object store (or a local
folder) into the step's folder, outputs uploaded after, model dirs tarred as SageMaker does.

A local input folder is validated before anything is copied: a folder that contains the
workspace is refused (it would copy itself into itself), and only the files a job of this
project can read are copied - images and the CIFAR-100 files, at most two levels down -
never whole trees.
"""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from scones.local.pipeline_runner.cache import files_digest
from scones.local.pipeline_runner.container import StepFailed
from scones.errors import PipelineExecutionError
from scones.storage import LocalObjectStore

# What preprocess.py reads from a local folder: <class>/<image>, or CIFAR-100's archive,
# or its extracted folder (meta + train, at the top or in cifar-100-python/).
READABLE_SUFFIXES = (".png", ".jpg", ".jpeg")
READABLE_NAMES = ("cifar-100-python.tar.gz", "meta", "train")
MAX_DEPTH = 2


class InputFolderError(PipelineExecutionError):
    """A local input folder that cannot be used as it is (it holds the workspace, or
    nothing the step can read)."""


def local_source(url: str) -> Path | None:
    """The local path a file:// URL or plain path names; None for s3:// URLs."""
    if url.startswith("s3://"):
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        raise StepFailed(f"cannot read {url!r} locally: only s3:// (the workspace's object "
                         "store), file:// and local paths")
    return Path(parsed.path if parsed.scheme == "file" else url).expanduser()


def refuse_folder_holding(source: Path, workspace: Path, what: str = "input") -> None:
    """An input folder that contains the workspace would be copied into itself."""
    source, workspace = source.resolve(), workspace.resolve()
    if workspace == source or source in workspace.parents:
        raise InputFolderError(
            f"{what} {source} contains the workspace {workspace}: copying it would copy the "
            "workspace into itself. Point data.input_url (or --param InputDataUrl) at the "
            "image folder itself (one subfolder per class), or move local.workspace out of it")


def readable_files(source: Path) -> Iterator[tuple[str, Path]]:
    """(relative name, path) of the files a job can read in a local input folder: images
    and CIFAR-100 files, at most MAX_DEPTH levels down; links to folders are not followed."""
    if source.is_file():
        yield source.name, source
        return
    for folder, subfolders, files in os.walk(source):
        depth = len(Path(folder).relative_to(source).parts)
        if depth >= MAX_DEPTH - 1:
            subfolders[:] = []
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(READABLE_SUFFIXES) or name in READABLE_NAMES:
                path = Path(folder) / name
                if path.is_file():
                    yield path.relative_to(source).as_posix(), path


class Transfer:
    """Copies for one execution, against the workspace's object store."""

    def __init__(self, store: LocalObjectStore, workspace: Path):
        self.store = store
        self.workspace = workspace

    def fetch(self, url: str, target: Path) -> None:
        """Copy an object or prefix into target; a local folder's readable files are copied
        from where they are (the local config's data lives outside the workspace)."""
        if url.startswith("s3://"):
            urls = self.store.list_urls(url)
            if not urls:
                raise StepFailed(f"nothing in the object store at {url} "
                                 f"(looked in {self.store.path_for(url)})")
            target.mkdir(parents=True, exist_ok=True)
            prefix = url.rstrip("/")
            for object_url in urls:
                relative = object_url[len(prefix):].lstrip("/") or object_url.rsplit("/", 1)[-1]
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.store.path_for(object_url), destination)
            return
        source = local_source(url)
        if not source.exists():
            raise StepFailed(f"input {url} does not exist")
        refuse_folder_holding(source, self.workspace)
        files = list(readable_files(source))
        if not files:
            raise StepFailed(
                f"input {url} has no file the step can read ({', '.join(READABLE_SUFFIXES)} "
                "images in one folder per class, or CIFAR-100's cifar-100-python.tar.gz); "
                "nothing was copied")
        target.mkdir(parents=True, exist_ok=True)
        for relative, path in files:
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)

    def digest(self, url: str) -> str:
        """The content behind an input URL, as the step would receive it (for cache keys)."""
        if url.startswith("s3://"):
            prefix = url.rstrip("/")
            return files_digest((u[len(prefix):].lstrip("/"), self.store.path_for(u))
                                for u in self.store.list_urls(url))
        source = local_source(url)
        if source is None or not source.exists():
            return "missing"
        refuse_folder_holding(source, self.workspace)
        return files_digest(readable_files(source))

    def fetch_code(self, url: str, code_dir: Path, step: str) -> None:
        archive = code_dir.parent / "sourcedir.tar.gz"
        if url.startswith("s3://"):
            archive.write_bytes(self.store.read_bytes(url))
        else:
            archive = local_source(url)
            if archive.is_dir():
                shutil.copytree(archive, code_dir, dirs_exist_ok=True)
                return
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(code_dir, filter="data")  # refuses members escaping code_dir
        except (tarfile.TarError, OSError) as exc:
            raise StepFailed(f"step {step}: cannot unpack the training code {url}: {exc}") \
                from None

    def upload(self, folder: Path, url: str) -> None:
        self.store.path_for(url)  # refuse an escaping URL before writing anything
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.store.upload_file(path, f"{url.rstrip('/')}/"
                                             f"{path.relative_to(folder).as_posix()}")

    def tar_to(self, folder: Path, url: str) -> None:
        destination = self.store.path_for(url)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.partial")
        with tarfile.open(partial, "w:gz") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=path.name)
        partial.replace(destination)
