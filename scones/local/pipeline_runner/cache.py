"""Step caching as SageMaker Pipelines does it (CacheConfig {Enabled, ExpireAfter}).

A cacheable step's key is the resolved values of the attributes SageMaker compares for its
type (its "default cache key attributes": for Processing AppSpecification, Environment,
ProcessingInputs; for Training AlgorithmSpecification, ..., HyperParameters,
InputDataConfig) - output locations are not part of it, so a new execution id does not miss.

SageMaker compares URLs only: new data written at the same URL would still hit. Locally the
key also holds a digest of the *content* behind every input URL the step reads (its data
and its code), so changing the images or a job script misses even where the URL is the same.
"""
from __future__ import annotations

import hashlib
import json
import re
import tarfile
from datetime import timedelta
from typing import Any, Callable, Iterable

from scones.errors import PipelineExecutionError

KEY_ATTRIBUTES = {
    "Processing": ("AppSpecification", "Environment", "ProcessingInputs"),
    "Training": ("AlgorithmSpecification", "CheckpointConfig", "DebugHookConfig",
                 "DebugRuleConfigurations", "Environment", "HyperParameters",
                 "InputDataConfig"),
}

# ISO 8601 durations as CacheConfig takes them: "P30D", "PT12H", "P4DT12H", "p30d", "T12H"
# (the SDK's examples leave out the P). Months and years are counted as 30 and 365 days.
_DURATION = re.compile(r"^P?(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
                       r"(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$", re.IGNORECASE)


def cache_expiry(text: str, where: str) -> timedelta:
    """ExpireAfter as a timedelta; a named error when it is not an ISO 8601 duration."""
    match = _DURATION.match(text.strip()) if text else None
    if not match or not any(match.groups()) or text.strip().upper().endswith("T"):
        raise PipelineExecutionError(
            f"{where}: CacheConfig ExpireAfter {text!r} is not an ISO 8601 duration "
            "(e.g. P30D for 30 days, PT12H for 12 hours)")
    years, months, weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(days=years * 365 + months * 30 + weeks * 7 + days, hours=hours,
                     minutes=minutes, seconds=seconds)


def input_urls(step_type: str, arguments: dict) -> list[str]:
    """The URLs a step reads: its data and its code."""
    urls = []
    if step_type == "Processing":
        for item in arguments.get("ProcessingInputs", []):
            uri = (item.get("S3Input") or {}).get("S3Uri")
            if isinstance(uri, str):
                urls.append(uri)
    elif step_type == "Training":
        for channel in arguments.get("InputDataConfig", []):
            uri = ((channel.get("DataSource") or {}).get("S3DataSource") or {}).get("S3Uri")
            if isinstance(uri, str):
                urls.append(uri)
        submit = (arguments.get("HyperParameters") or {}).get("sagemaker_submit_directory")
        if isinstance(submit, str):
            urls.append(submit.strip('"'))
    return urls


def cache_key(step_type: str, arguments: dict,
              content_digest: Callable[[str], str]) -> str:
    """The step's cache key: its key attributes (resolved) plus the digest of the content
    behind each URL it reads."""
    attributes = {name: arguments.get(name) for name in KEY_ATTRIBUTES[step_type]}
    contents = {url: content_digest(url) for url in sorted(set(input_urls(step_type,
                                                                          arguments)))}
    document = json.dumps({"Type": step_type, "Attributes": attributes, "Contents": contents},
                          sort_keys=True, default=str)
    return hashlib.sha256(document.encode()).hexdigest()


def files_digest(files: Iterable[tuple[str, Any]]) -> str:
    """One digest of (relative name, path) pairs: names and contents, in name order. A
    .tar.gz counts by its members' names and bytes: the SDK packs the same code into a new
    archive (new timestamps) for every definition it renders."""
    digest = hashlib.sha256()
    for name, path in sorted(files, key=lambda item: item[0]):
        digest.update(name.encode() + b"\0")
        digest.update(_archive_digest(path) or _file_digest(path))
    return digest.hexdigest()


def _file_digest(path) -> bytes:
    file_digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            file_digest.update(block)
    return file_digest.digest()


def _archive_digest(path) -> bytes | None:
    if not str(path).endswith((".tar.gz", ".tgz")):
        return None
    digest = hashlib.sha256()
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in sorted(archive.getmembers(), key=lambda m: m.name):
                digest.update(member.name.encode() + b"\0")
                if member.isfile():
                    digest.update(hashlib.sha256(archive.extractfile(member).read()).digest())
    except (tarfile.TarError, OSError, EOFError):
        return None  # not a readable archive: its bytes are its identity
    return digest.digest()
