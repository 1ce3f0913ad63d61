"""The one seam between the embedded default and AWS.

`backend_for(config)` is the only place that looks at `config.env`. Everything that differs
between running on this machine and running on AWS is handed out here, in the shape of
boto3's clients where AWS has one, so the layers above deploy and run the same way on both:

| what                        | LocalBackend (scones.local)                 | AwsBackend              |
|-----------------------------|---------------------------------------------|-------------------------|
| object store (s3:// URLs)   | <workspace>/s3/<bucket>/<key>               | S3                      |
| model registry              | SQLite in the workspace                     | SageMaker Model Registry|
| SageMaker control plane     | LocalSageMakerControlPlane (endpoint files) | boto3 `sagemaker`       |
| deployment guardrails       | lock, health check, bake (local.guardrails) | SageMaker's own         |
| stage-test verdicts         | a file beside the endpoints                 | model package metadata  |
| an approval's deployment    | done at once (no event bus)                 | EventBridge rule's job  |
| pipeline session (SDK)      | on moto's S3; uploads copied to the store   | a real one              |
| pipeline executor           | local.pipeline_runner.pipelines_api         | sagemaker_pipelines     |
| inference workflow runtime  | moto's Step Functions, in-process Lambdas,  | the deployed state      |
|                             | the local endpoint (local.state_machines)   | machines                |
| the endpoint server         | local.endpoint (`scones endpoint serve`)    | refused: SageMaker's    |
| boto3 clients               | cloudwatch only (metrics.jsonl); others are | boto3, configured region|
|                             | refused: nothing local talks to AWS         |                         |

scones.local (the Docker-free twin) is imported by no other module above the core. Its
heavy parts (the Step Functions engine, the endpoint, the pipeline runner, the guardrails: they
bring moto, boto3, numpy and the model's code) are imported by the methods that hand them
out, for the CLI's start-up time; tests/scones/test_import_graph.py reads those imports too,
so they hide no import circle.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

from scones.config import LAMBDA_RUNTIME, Config, account_of
from scones.errors import SconesError
from scones.local.cloudwatch import LocalCloudWatch
from scones.local.control_plane import LocalSageMakerControlPlane
from scones.local.deployment_state import StageTestRecords
from scones.local.resources import LOCAL_ACCOUNT_ID, LocalResources
from scones.registry import LocalRegistry, ModelPackageStageTests, SageMakerRegistry
from scones.sagemaker_pipelines import SageMakerPipelineExecutor
from scones.sdk import pipeline_session
from scones.storage import LocalObjectStore, S3ObjectStore
from scones.workspace import Workspace

T = TypeVar("T")

# Named here for the layers above (infra, the tests): both live in the core.
__all__ = ["LAMBDA_RUNTIME", "LOCAL_ACCOUNT_ID", "AwsBackend", "Backend", "BackendError",
           "LocalBackend", "StateMachine", "backend_for"]

AWS_POLL_INTERVAL_S = 1.0


class BackendError(SconesError):
    """Something asked of a backend it does not do (e.g. an AWS client on the local one)."""


@dataclass(frozen=True)
class StateMachine:
    """One state machine of the inference workflow: its name, what builds its ASL exactly as
    deployed (called only where the backend deploys it: AWS's is deployed already), and what
    to do when AWS has none of that name (`missing_hint`)."""

    name: str
    definition: Callable[[], str]
    missing_hint: str


class Backend:
    """What both backends offer. Subclasses differ only in how, never in what."""

    name: str = ""

    def __init__(self, config: Config):
        self.config = config
        self.workspace = Workspace(config.local.workspace)

    def require_local(self, why: str) -> None:
        """Refuse, with `why`, what only the embedded default does."""
        if self.name != "local":
            raise BackendError(why)

    def require_aws(self, why: str) -> None:
        """Refuse, with `why`, what only AWS does."""
        if self.name != "aws":
            raise BackendError(why)

    @property
    def account_id(self) -> str:
        raise NotImplementedError

    @property
    def real_bucket(self) -> str | None:
        """The configured bucket where it is a real S3 bucket (AWS), else None: a local
        config's bucket names only a folder of the workspace."""
        raise NotImplementedError

    def object_store(self) -> LocalObjectStore | S3ObjectStore:
        raise NotImplementedError

    def registry(self):
        raise NotImplementedError

    def sagemaker(self):
        """The SageMaker control plane that deployments talk to."""
        raise NotImplementedError

    def client(self, service: str):
        """A boto3 client (or one shaped as it) for `service` in the configured region."""
        raise NotImplementedError

    def pipeline_session(self) -> contextlib.AbstractContextManager:
        """A context manager yielding the sagemaker PipelineSession definitions build on."""
        raise NotImplementedError

    def pipeline_definition(self, build: Callable[[Any], Any],
                            cache_key: str | None = None) -> dict:
        """The definition JSON of the pipeline build(session) makes on this backend's
        pipeline session. cache_key: a hash of everything it depends on; the local backend
        then reuses the one it built for that key while the code it uploaded is still in
        the object store (AWS always builds: the upload to S3 is part of it)."""
        with self.pipeline_session() as session:
            return json.loads(build(session).definition())

    def pipeline_executor(self):
        """What runs pipeline definitions: run(factory, parameters, ...), retry(id),
        executions(limit) (see pipelines.executors for the answers' shape)."""
        raise NotImplementedError

    def workflow_runtime(self, machines: Sequence[StateMachine],
                         functions: Callable[[], Sequence[Any]],
                         *, model_version: int | None = None, model_tar=None,
                         endpoint_url: str | None = None, reuse_endpoint: bool = False,
                         keep_endpoint_s: float | None = None, progress: bool = False):
        """A context manager: the state machines ready to run, as a runtime with
        `stepfunctions` (StartExecution, DescribeExecution, GetExecutionHistory),
        `s3` (reads) and `staging` (CreateBucket, PutObject) shaped as boto3's clients;
        `state_machine_arn(name)`; `poll_interval` (`long_poll_interval` for one long
        execution), `ended` (None, or a callable saying which executions ended) and
        `give_up_after_s` for run_executions; and
        `release(arn, staged)` once an ended execution's result is read (the local
        engine then forgets it and the input staged for it: memory flat in the images);
        `ensure_bucket`, `import_object`, `import_prefix`, `export_prefix`, which bring
        the object store's objects to the S3 the workflow reads, and what it wrote back.
        functions(): the Lambdas the machines call (workflow.definition.LambdaFunction),
        asked for when they are deployed (never on AWS, where they are deployed already)."""
        raise NotImplementedError

    def deployment_guard(self, stage: str, endpoint_name: str):
        """A context manager around one deployment: `before_switch(package)`, then
        `after_switch(result, package)` (see scones.local.guardrails)."""
        raise NotImplementedError

    def stage_tests(self):
        """Where stage-test verdicts are kept: record(package_arn, stage, result),
        result(package, stage)."""
        raise NotImplementedError

    def deliver_approval(self, deploy: Callable[[], T]) -> T | None:
        """What an approval sets off: on AWS the EventBridge rule hands it to the deploy
        state machine (None here); locally there is no event bus, so `deploy()` runs now."""
        raise NotImplementedError

    def serve_endpoint(self, port: int = 0, model_version: int | None = None):
        """A context manager serving the endpoint on this machine (`scones endpoint serve`)."""
        raise NotImplementedError


class LocalBackend(Backend):
    name = "local"

    def __init__(self, config: Config):
        super().__init__(config)
        self.resources = LocalResources(config)

    @property
    def account_id(self) -> str:
        return self.resources.account_id

    @property
    def real_bucket(self) -> str | None:
        return None

    def object_store(self) -> LocalObjectStore:
        return self.resources.object_store()

    def registry(self) -> LocalRegistry:
        return self.resources.registry()

    def sagemaker(self) -> LocalSageMakerControlPlane:
        return LocalSageMakerControlPlane(self.config, self.workspace, self.registry(),
                                          self.account_id)

    def client(self, service: str):
        if service == "cloudwatch":
            return LocalCloudWatch(self.config)
        raise BackendError(f"the local environment has no AWS {service} client: nothing local "
                           "talks to AWS (use --env aws for that)")

    def pipeline_session(self) -> contextlib.AbstractContextManager:
        from scones.local.pipeline_runner.pipelines_api import local_pipeline_session  # start-up

        return local_pipeline_session(self.config)

    def pipeline_definition(self, build: Callable[[Any], Any],
                            cache_key: str | None = None) -> dict:
        if cache_key is None:
            return super().pipeline_definition(build)
        from scones.local.pipeline_runner.pipelines_api import cached_pipeline_definition  # start-up

        return cached_pipeline_definition(self.config, cache_key, build)

    def pipeline_executor(self):
        from scones.local.pipeline_runner.pipelines_api import LocalPipelineExecutor  # start-up

        return LocalPipelineExecutor(self.config)

    def workflow_runtime(self, machines, functions, *, model_version=None, model_tar=None,
                         endpoint_url=None, reuse_endpoint=False, keep_endpoint_s=None,
                         progress=False):
        from scones.local.state_machines import LocalWorkflowRuntime  # start-up time

        return LocalWorkflowRuntime(
            self.config, machines, functions, model_version=model_version,
            model_tar=model_tar, endpoint_url=endpoint_url, reuse_endpoint=reuse_endpoint,
            keep_endpoint_s=keep_endpoint_s, progress=progress)

    def deployment_guard(self, stage: str, endpoint_name: str):
        from scones.local.guardrails import LocalDeploymentGuard  # start-up time

        return LocalDeploymentGuard(self.config, stage, endpoint_name)

    def stage_tests(self) -> StageTestRecords:
        return StageTestRecords(self.workspace)

    def deliver_approval(self, deploy: Callable[[], T]) -> T | None:
        return deploy()

    @contextlib.contextmanager
    def serve_endpoint(self, port: int = 0, model_version: int | None = None) -> Iterator[Any]:
        # start-up time: the endpoint server is needed only by `scones endpoint serve`
        from scones.local.endpoint.server import start_endpoint
        from scones.local.endpoint.background import register_running, unregister_running

        endpoint = start_endpoint(self.config, port=port, model_version=model_version)
        # `workflow run` finds and reuses this endpoint instead of starting its own; a pinned
        # model_version is not what the workflow would serve, so that one is not offered.
        offered = model_version is None
        if offered:
            register_running(self.config, endpoint.url, os.getpid(), "serve")
        try:
            yield endpoint
        finally:
            if offered:
                unregister_running(self.config, os.getpid())
            endpoint.stop()


class AwsBackend(Backend):
    name = "aws"

    def __init__(self, config: Config):
        super().__init__(config)
        self._clients: dict[str, Any] = {}
        self._account: str | None = None

    @property
    def account_id(self) -> str:
        if self._account is None:
            self._account = (account_of(self.config.aws.role_arn)
                             or self.client("sts").get_caller_identity()["Account"])
        return self._account

    @property
    def real_bucket(self) -> str | None:
        return self.config.aws.bucket or None

    def client(self, service: str):
        if service not in self._clients:
            import boto3  # lazily: boto3 takes a while to import, and local runs never need it

            self._clients[service] = boto3.client(service, region_name=self.config.aws.region)
        return self._clients[service]

    def object_store(self) -> S3ObjectStore:
        return S3ObjectStore(self.client("s3"))

    def registry(self) -> SageMakerRegistry:
        return SageMakerRegistry(self.config, sagemaker_client=self.client("sagemaker"),
                                 s3_client=self.client("s3"))

    def sagemaker(self):
        return self.client("sagemaker")

    @contextlib.contextmanager
    def pipeline_session(self) -> Iterator[Any]:
        yield pipeline_session(self.config)

    def pipeline_executor(self) -> SageMakerPipelineExecutor:
        return SageMakerPipelineExecutor(self)

    def workflow_runtime(self, machines, functions, *, model_version=None, model_tar=None,
                         endpoint_url=None, reuse_endpoint=False, keep_endpoint_s=None,
                         progress=False) -> "AwsWorkflowRuntime":
        if model_version is not None or model_tar is not None:
            raise BackendError("--model-version chooses the local endpoint's model; on AWS the "
                               "endpoint serves the deployed version (`scones endpoint deploy`)")
        return AwsWorkflowRuntime(self, machines)

    def deployment_guard(self, stage: str, endpoint_name: str) -> "SageMakerGuardrails":
        return SageMakerGuardrails()

    def stage_tests(self) -> ModelPackageStageTests:
        return ModelPackageStageTests(self.client("sagemaker"))

    def deliver_approval(self, deploy: Callable[[], T]) -> T | None:
        return None

    def serve_endpoint(self, port: int = 0, model_version: int | None = None):
        raise BackendError("`scones endpoint serve` runs the local endpoint; on AWS the "
                           "endpoint is SageMaker's (`scones endpoint status --env aws`)")


class AwsWorkflowRuntime:
    """The state machines deployed on AWS (the stack or `scones workflow deploy`), in the
    shape of scones.local.state_machines.LocalWorkflowRuntime. The workflow reads S3
    itself, so nothing is brought over."""

    poll_interval = AWS_POLL_INTERVAL_S
    long_poll_interval = 2.0  # one execution that runs for minutes (a bulk run)
    ended = None
    give_up_after_s = None

    def __init__(self, backend: AwsBackend, machines: Sequence[StateMachine]):
        self.backend = backend
        self.machines = list(machines)
        self.state_machine_arns: dict[str, str] = {}

    def __enter__(self) -> "AwsWorkflowRuntime":
        config = self.backend.config
        self.stepfunctions = self.backend.client("stepfunctions")
        self.s3 = self.staging = self.backend.client("s3")
        partition = aws_partition(config.aws.region)
        for machine in self.machines:
            arn = (f"arn:{partition}:states:{config.aws.region}:{self.backend.account_id}:"
                   f"stateMachine:{machine.name}")
            try:
                self.stepfunctions.describe_state_machine(stateMachineArn=arn)
            except self.stepfunctions.exceptions.StateMachineDoesNotExist:
                raise SconesError(f"state machine {arn} does not exist: "
                                  f"{machine.missing_hint}") from None
            self.state_machine_arns[machine.name] = arn
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def state_machine_arn(self, name: str) -> str:
        return self.state_machine_arns[name]

    def release(self, execution_arn: str, staged: tuple[str, str] | None = None) -> None:
        pass  # Step Functions keeps executions and the inputs stay in S3, as they always did

    def ensure_bucket(self, bucket: str) -> None:
        pass

    def import_object(self, url: str) -> None:
        pass

    def import_prefix(self, prefix_url: str) -> int | None:
        return None  # the workflow lists S3 itself

    def export_prefix(self, prefix_url: str) -> None:
        pass


class SageMakerGuardrails:
    """On AWS SageMaker itself serialises a deployment, checks the new variant's health and
    rolls it back on the configured alarms (the approval Lambda's settings): nothing to add."""

    def __enter__(self) -> "SageMakerGuardrails":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def before_switch(self, package: dict) -> None:
        pass

    def after_switch(self, result: dict, package: dict) -> None:
        pass


BACKENDS = {"local": LocalBackend, "aws": AwsBackend}


def backend_for(config: Config) -> Backend:
    """The backend of the config's environment (--env local|aws)."""
    return BACKENDS[config.env](config)


def aws_partition(region: str) -> str:
    """"aws", "aws-cn", "aws-us-gov"... for a region, from botocore's endpoint data."""
    import boto3  # lazily: boto3 takes a while to import, and local runs rarely need it

    return boto3.session.Session().get_partition_for_region(region)
