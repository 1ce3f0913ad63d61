"""The one seam between the embedded default and AWS.

`backend_for(config)` is the only place that looks at `config.env`. Everything that differs
between running on this machine and running on AWS is handed out here:

| what                     | LocalBackend                               | AwsBackend              |
|--------------------------|--------------------------------------------|-------------------------|
| object store (s3:// URLs)| <workspace>/s3/<bucket>/<key>               | S3                      |
| model registry           | SQLite in the workspace                    | SageMaker Model Registry|
| SageMaker control plane  | LocalSageMakerControlPlane (endpoint files)| boto3 `sagemaker`       |
| pipeline session (SDK)   | a PipelineSession on moto's S3; uploads are copied into the object store | a real one |
| boto3 clients            | refused: nothing local talks to AWS         | boto3, configured region|

Executors that live in the model-build or workflow packages (the local pipeline runner vs
SageMaker Pipelines, moto's Step Functions engine vs AWS's) are chosen with
`backend.pick(local=..., aws=...)`, so the choice stays here too.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, TypeVar

from scones.config import Config
from scones.errors import SconesError
from scones.storage import LocalObjectStore, S3ObjectStore
from scones.workspace import Workspace

T = TypeVar("T")

# The account id of every ARN the embedded default makes (moto's default account too).
LOCAL_ACCOUNT_ID = "123456789012"
# The Lambda runtime of every function the project deploys (CloudFormation, `workflow
# deploy`, the local engine). python3.13: supported until 2029-06 (AWS Lambda runtimes page).
LAMBDA_RUNTIME = "python3.13"


class BackendError(SconesError):
    """Something asked of a backend it does not do (e.g. an AWS client on the local one)."""


class Backend:
    """What both backends offer. Subclasses differ only in how, never in what."""

    name: str = ""

    def __init__(self, config: Config):
        self.config = config
        self.workspace = Workspace(config.local.workspace)

    def pick(self, *, local: T, aws: T) -> T:
        """The one of two implementations that belongs to this backend."""
        return local if self.name == "local" else aws

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

    def object_store(self) -> LocalObjectStore | S3ObjectStore:
        raise NotImplementedError

    def registry(self):
        raise NotImplementedError

    def sagemaker(self):
        """The SageMaker control plane that deployments talk to."""
        raise NotImplementedError

    def client(self, service: str):
        """A boto3 client for `service` in the configured region."""
        raise NotImplementedError

    def pipeline_session(self) -> contextlib.AbstractContextManager:
        """A context manager yielding the sagemaker PipelineSession definitions build on."""
        raise NotImplementedError


class LocalBackend(Backend):
    name = "local"

    @property
    def account_id(self) -> str:
        return _account_of(self.config.aws.role_arn) or LOCAL_ACCOUNT_ID

    def object_store(self) -> LocalObjectStore:
        return LocalObjectStore(self.workspace.object_store_dir)

    def registry(self):
        from scones.registry import LocalRegistry

        return LocalRegistry(self.config, self.workspace, self.object_store(), self.account_id)

    def sagemaker(self):
        from scones.local.control_plane import LocalSageMakerControlPlane

        return LocalSageMakerControlPlane(self.config, self.workspace, self.registry(),
                                          self.account_id)

    def client(self, service: str):
        raise BackendError(f"the local environment has no AWS {service} client: nothing local "
                           "talks to AWS (use --env aws for that)")

    @contextlib.contextmanager
    def pipeline_session(self) -> Iterator[Any]:
        """Build exactly as for AWS, against moto's S3, then copy what the SDK uploaded
        (job code, sourcedir.tar.gz) into the workspace's object store, so every s3:// URL
        in the definition resolves to a local file."""
        from scones.sdk import pipeline_session, sagemaker_sdk

        sagemaker_sdk()
        import boto3
        from moto import mock_aws

        store = self.object_store()
        with mock_aws():
            boto_session = boto3.Session(region_name=self.config.aws.region)
            s3 = boto_session.client("s3")
            # Outside us-east-1, S3 wants the region named (as the real bucket was made).
            s3.create_bucket(Bucket=self.config.aws.bucket, **(
                {} if self.config.aws.region == "us-east-1" else
                {"CreateBucketConfiguration": {"LocationConstraint": self.config.aws.region}}))
            yield pipeline_session(self.config, boto_session)
            uploaded = S3ObjectStore(s3)
            for url in uploaded.list_urls(f"s3://{self.config.aws.bucket}/"):
                store.write_bytes(url, uploaded.read_bytes(url))


class AwsBackend(Backend):
    name = "aws"

    def __init__(self, config: Config):
        super().__init__(config)
        self._clients: dict[str, Any] = {}
        self._account: str | None = None

    @property
    def account_id(self) -> str:
        if self._account is None:
            self._account = (_account_of(self.config.aws.role_arn)
                             or self.client("sts").get_caller_identity()["Account"])
        return self._account

    def client(self, service: str):
        if service not in self._clients:
            import boto3

            self._clients[service] = boto3.client(service, region_name=self.config.aws.region)
        return self._clients[service]

    def object_store(self) -> S3ObjectStore:
        return S3ObjectStore(self.client("s3"))

    def registry(self):
        from scones.registry import SageMakerRegistry

        return SageMakerRegistry(self.config, sagemaker_client=self.client("sagemaker"),
                                 s3_client=self.client("s3"))

    def sagemaker(self):
        return self.client("sagemaker")

    @contextlib.contextmanager
    def pipeline_session(self) -> Iterator[Any]:
        from scones.sdk import pipeline_session

        yield pipeline_session(self.config)


BACKENDS = {"local": LocalBackend, "aws": AwsBackend}


def backend_for(config: Config) -> Backend:
    """The backend of the config's environment (--env local|aws)."""
    return BACKENDS[config.env](config)


def _account_of(arn: str | None) -> str | None:
    """The account id inside an ARN (arn:aws:iam::<account>:role/x), None if it has none."""
    parts = (arn or "").split(":")
    return parts[4] if len(parts) > 4 and parts[4].isdigit() else None

