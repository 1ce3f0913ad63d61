"""The local runner behind the executor API SageMaker Pipelines has (run, retry, executions):
what `scones.backend.LocalBackend.
pipeline_executor()` hands out (SageMaker's counterpart is scones.sagemaker_pipelines).
It builds the definition exactly as for SageMaker, on a PipelineSession whose S3 is moto's
(what the SDK uploads is copied into the workspace's object store), then runs it step by step
on this machine."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Callable, Iterator, Mapping

from scones.config import Config
from scones.local.pipeline_runner.executions import ExecutionStore
from scones.local.pipeline_runner.runner import retry_pipeline_locally, run_pipeline_locally
from scones.local.pipeline_runner.transfer import local_source, refuse_folder_holding
from scones.local.resources import LocalResources
from scones.sdk import pipeline_session, sagemaker_sdk
from scones.storage import S3ObjectStore


class LocalPipelineExecutor:
    """Runs the definition JSON step by step on this machine (scones.local.pipeline_runner)."""

    def __init__(self, config: Config):
        self.config = config
        self.resources = LocalResources(config)

    def run(self, factory: Callable, parameters: Mapping[str, Any] | None = None,
            wait: bool = True, progress: bool = True, input_url: str | None = None,
            **_aws_only: Any) -> dict:
        """input_url: the checked InputDataUrl; a folder holding the workspace is refused."""
        source = local_source(input_url or "")
        if source is not None and input_url:
            refuse_folder_holding(source, self.resources.workspace.root,
                                  "the input folder (InputDataUrl)")
        if progress:
            print("building the pipeline definition ...", file=sys.stderr, flush=True)
        result = self.execute(self.definition(factory), parameters, progress=progress)
        return result.to_dict()

    def definition(self, factory: Callable) -> dict:
        """The definition as SageMaker would receive it, built on the local session."""
        with local_pipeline_session(self.config) as session:
            return json.loads(factory(self.config, session).definition())

    def execute(self, definition: dict, parameters: Mapping[str, Any] | None = None,
                progress: bool = True):
        """Run a definition to its end: the runner's ExecutionResult (steps, properties)."""
        return run_pipeline_locally(definition, self.config, dict(parameters or {}),
                                    progress=progress)

    def retry(self, execution_id: str, wait: bool = True, progress: bool = True) -> dict:
        return retry_pipeline_locally(execution_id, self.config, progress=progress).to_dict()

    def stop(self, execution_id: str) -> bool:
        """Stop a running execution (its runner records it Stopped); False if not running."""
        return ExecutionStore(self.resources.workspace).stop(execution_id)

    def executions(self, limit: int | None = None) -> list[dict]:
        return ExecutionStore(self.resources.workspace).list(limit)


DEFINITION_CACHE_FOLDER = "cache/pipeline-definitions"


def cached_pipeline_definition(config: Config, key: str, build: Callable[[Any], Any]) -> dict:
    """build(session)'s definition, kept under <workspace>/cache/pipeline-definitions/<key>.json
    with the URLs of the code the SDK uploaded for it: reused while the key (a hash of all it
    depends on) is the same and every upload is still in the object store, so `scones
    pipeline definition` then needs neither the SDK nor moto. An unreadable or unwritable
    cache only means building it again."""
    resources = LocalResources(config)
    store = resources.object_store()
    path = resources.workspace.root / DEFINITION_CACHE_FOLDER / f"{key}.json"
    try:
        kept = json.loads(path.read_text())
        if isinstance(kept.get("Definition"), dict) and all(
                store.exists(url) for url in kept["Uploads"]):
            return kept["Definition"]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass
    uploads: list[str] = []
    with local_pipeline_session(config, uploads) as session:
        definition = json.loads(build(session).definition())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"Definition": definition, "Uploads": uploads}))
        tmp.replace(path)  # never a half-written definition under the final name
    except OSError:
        pass
    return definition


@contextlib.contextmanager
def local_pipeline_session(config: Config, uploads: list[str] | None = None) -> Iterator[Any]:
    """Build exactly as for AWS, against moto's S3, then copy what the SDK uploaded
    (job code, sourcedir.tar.gz) into the workspace's object store, so every s3:// URL
    in the definition resolves to a local file. uploads: given, the copied URLs are added."""
    sagemaker_sdk()
    import boto3  # lazily, with moto: both take seconds to import and only builds need them
    from moto import mock_aws

    store = LocalResources(config).object_store()
    with mock_aws():
        boto_session = boto3.Session(region_name=config.aws.region)
        s3 = boto_session.client("s3")
        # Outside us-east-1, S3 wants the region named (as the real bucket was made).
        s3.create_bucket(Bucket=config.aws.bucket, **(
            {} if config.aws.region == "us-east-1" else
            {"CreateBucketConfiguration": {"LocationConstraint": config.aws.region}}))
        yield pipeline_session(config, boto_session)
        uploaded = S3ObjectStore(s3)
        for url in uploaded.list_urls(f"s3://{config.aws.bucket}/"):
            store.write_bytes(url, uploaded.read_bytes(url))
            if uploads is not None:
                uploads.append(url)
