"""The inference workflow deployed on this machine, for one run or many.

The SAME state machine definitions that go to AWS and the SAME Lambda zips (lambdas.build)
are deployed into moto's Step Functions engine (scones.local.stepfunctions_engine); the
classify Lambda reaches the local SageMaker endpoint (scones.local.endpoint, in a child
process of its own) over HTTP. `LocalWorkflowRuntime` answers in the shape of
`scones.backend.AwsWorkflowRuntime`, so the workflow package drives both the same way.
"""
from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from typing import Any, Callable, Sequence

from lambdas.build import build_lambda_zips
from scones.config import LAMBDA_RUNTIME, Config
from scones.local.endpoint.process import EndpointProcess
from scones.local.endpoint.background import find_running, start_background
from scones.local.resources import LocalResources
from scones.local.stepfunctions_engine import (DirectDeploy, DirectExecutions, DirectStaging,
                                               check_moto_version, local_aws)
from scones.storage import split_s3_url

# The local engine reports ended executions; this is only the safety sweep's period.
LOCAL_POLL_INTERVAL_S = 0.5
# Beyond the state machine's own TimeoutSeconds (600): moto should have ended it by then.
LOCAL_GIVE_UP_AFTER_S = 660.0
TRUST_POLICY = {"Version": "2012-10-17", "Statement": []}
LAMBDA_CODE_CACHE = "cache/lambda-code"  # each zip's files, by its hash, across runs


class LocalWorkflowRuntime:
    """moto with the state machines and their Lambdas deployed, the endpoint running:
    entered once, run many times."""

    poll_interval = long_poll_interval = LOCAL_POLL_INTERVAL_S
    give_up_after_s: float | None = LOCAL_GIVE_UP_AFTER_S

    def __init__(self, config: Config, machines: Sequence[Any],
                 functions: Callable[[], Sequence[Any]],
                 model_version: int | None = None, model_tar=None,
                 endpoint_url: str | None = None, reuse_endpoint: bool = False,
                 keep_endpoint_s: float | None = None, progress: bool = False):
        self.config = config
        self.machines = list(machines)
        self.functions = functions  # made when deployed
        self.model_version = model_version
        self.model_tar = model_tar
        self.endpoint_url = endpoint_url  # a running endpoint to use instead of starting one
        self.endpoint = None
        # Unpinned runs may use the endpoint recorded as running (reuse_endpoint), or leave
        # one running in the background for keep_endpoint_s idle seconds (endpoint/background.py).
        self.reuse_endpoint = reuse_endpoint
        self.keep_endpoint_s = keep_endpoint_s
        self.progress = progress
        resources = LocalResources(config)
        self.workspace = resources.workspace
        self.store = resources.object_store()
        self.state_machine_arns: dict[str, str] = {}
        self._made_buckets: set[str] = set()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "LocalWorkflowRuntime":
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def _start(self) -> None:
        config = self.config
        check_moto_version()
        region = config.aws.region
        zip_dir = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="scones-zips-"))
        functions = list(self.functions())
        zips = build_lambda_zips(zip_dir, keys=[f.key for f in functions])
        # Its own process: the model and its HTTP server then take no GIL time from the
        # engine and the Lambdas, which share this one (~42% of it when in process).
        pinned = self.model_version is not None or self.model_tar is not None
        if self.endpoint_url is None and not pinned and (self.reuse_endpoint
                                                         or self.keep_endpoint_s):
            running = find_running(config) if self.reuse_endpoint else None
            if running is not None and self.progress:
                print(f"using the running endpoint at {running.url} ({running.owner}, pid "
                      f"{running.pid})", file=sys.stderr, flush=True)
            if running is None and self.keep_endpoint_s:
                running = start_background(config, self.keep_endpoint_s, self.progress)
            if running is not None:
                self.endpoint_url = running.url
        if self.endpoint_url is None:
            self.endpoint = self._stack.enter_context(EndpointProcess(
                config, model_version=self.model_version, model_tar=self.model_tar))
            self.endpoint_url = self.endpoint.url
        aws = self._stack.enter_context(local_aws(
            region, self.endpoint_url, code_cache=self.workspace.root / LAMBDA_CODE_CACHE))
        self.ended: Callable[[float], list[str]] | None = aws.ended_executions
        deploy = DirectDeploy(region)
        lambda_role = _create_role(deploy, config.aws.lambda_role_arn, "lambda")
        states_role = _create_role(deploy, config.aws.states_role_arn, "states")
        for function in functions:
            deploy.create_function(
                FunctionName=function.name, Runtime=LAMBDA_RUNTIME, Role=lambda_role,
                Handler=function.handler, Code={"ZipFile": zips[function.key].read_bytes()},
                Timeout=function.timeout, MemorySize=function.memory_size,
                Environment={"Variables": function.environment})
        aws.lambdas.pin_environment([f.environment for f in functions])
        # boto3 clients are made on first use only: each loads its service model.
        self.s3 = _LazyClient("s3", region)
        self.staging = DirectStaging(self.s3, region)
        self.stepfunctions = DirectExecutions(_LazyClient("stepfunctions", region), region,
                                              names=aws.execution_names)
        for machine in self.machines:
            self.state_machine_arns[machine.name] = deploy.create_state_machine(
                machine.name, machine.definition(), states_role)

    def state_machine_arn(self, name: str) -> str:
        return self.state_machine_arns[name]

    # The workflow reads S3: moto's, which starts empty. What it reads is put there from the
    # workspace's object store (same bucket and key), and what it writes is kept there.

    def ensure_bucket(self, bucket: str) -> None:
        if bucket not in self._made_buckets:
            self.staging.create_bucket(Bucket=bucket)
            self._made_buckets.add(bucket)

    def release(self, execution_arn: str, staged: tuple[str, str] | None = None) -> None:
        """An ended execution whose result has been read: moto forgets it (its history
        included), and the input staged for it alone (staged: bucket, key) is deleted from
        moto's S3, which is gone when the run ends anyway. Keeps a run's memory flat in
        its number of images."""
        self.stepfunctions.release(executionArn=execution_arn)
        if staged is not None:
            self.staging.delete_object(Bucket=staged[0], Key=staged[1])

    def import_object(self, url: str) -> None:
        """The object store's object at url into moto's S3; a missing one is left missing,
        so serialize reports ImageNotFound for it."""
        bucket, key = split_s3_url(url)
        self.ensure_bucket(bucket)
        if self.store.exists(url) and self.store.path_for(url).is_file():
            self.staging.put_object(Bucket=bucket, Key=key, Body=self.store.read_bytes(url))

    def import_prefix(self, prefix_url: str) -> int:
        """Every object of the object store under prefix_url into moto's S3, where the plan
        Lambda lists them as it would on AWS."""
        bucket, _ = split_s3_url(prefix_url)
        self.staging.create_bucket(Bucket=bucket)
        self._made_buckets.add(bucket)
        urls = self.store.list_urls(prefix_url)
        for url in urls:
            _, key = split_s3_url(url)
            self.staging.put_object(Bucket=bucket, Key=key, Body=self.store.read_bytes(url))
        return len(urls)

    def export_prefix(self, prefix_url: str) -> None:
        """What the run wrote under prefix_url, from moto's S3 (gone when the run ends) into
        the object store, at the same s3:// URLs as on AWS."""
        bucket, prefix = split_s3_url(prefix_url)
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                       Prefix=prefix):
            for item in page.get("Contents", []):
                body = self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                self.store.write_bytes(f"s3://{bucket}/{item['Key']}", body)


def _create_role(deploy, arn: str | None, service: str) -> str:
    """The configured role, created in moto (Lambda refuses a role that does not exist)."""
    name = (arn or f"scones-local-{service}").rpartition("/")[2]
    return deploy.create_role(name, json.dumps(TRUST_POLICY))


class _LazyClient:
    """A boto3 client made at its first use."""

    def __init__(self, service: str, region: str):
        self._service, self._region, self._client = service, region, None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            import boto3  # lazily: boto3 loads each service model when a client is made

            self._client = boto3.client(self._service, region_name=self._region)
        return getattr(self._client, name)
