"""All the glue between this project and moto, in one place.

moto's Step Functions "execution mode" (a port of LocalStack's ASL interpreter) runs the
SAME state machine definition that goes to AWS. Two things need bending for a machine
with no AWS account and no Docker:

* Its lambda:invoke task calls moto's Lambda backend, which runs functions in Docker.
  We replace the narrowest point, `LambdaFunction._invoke_lambda`, with an in-process
  call of the handler loaded from the function's own deployed zip; a raised exception
  becomes a Lambda function error {"errorType": <class name>, "errorMessage": ...}, so
  the state machine's Retry/Catch rules match exactly as they do on AWS.
  The task itself reaches that function without a boto3 round trip through moto's HTTP
  emulation (`_DirectLambdaTasks`): same lookup, same payload and error shape.
* The classify Lambda's sagemaker-runtime call must reach the local endpoint over real
  HTTP: that URL is a moto passthrough and AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME points at it.

The engine and the Lambdas run in one process under one GIL (the endpoint has its own,
see scones/local/state_machines.py), so their CPU per image is the workflow's throughput.
Speed patches, each keeping moto's answers (see each class): the ASL parsed once per
definition (CreateStateMachine's validation included) and each JSONPath once; boto3
clients reused; S3's URL table and response method lists computed once per run;
execution names indexed; `DirectExecutions` / `DirectStaging` / `DirectDeploy` give the
local runner StartExecution/DescribeExecution, CreateBucket/PutObject and the roles,
functions and state machines it creates on moto's backends without botocore (errors still
come from the boto3 client); `DirectS3Reads` does the same for the in-process Lambdas'
GetObject (the bulk workflow's largest cost); and moto's Batch/EC2 backends are not
imported unless used (`_import_batch_utils_without_batch`).

One engine gap is bridged rather than patched for speed: moto's ASL grammar accepts only
STANDARD as a Distributed Map's child ExecutionType; the bulk workflow deploys EXPRESS,
which moto reads as STANDARD (no difference in how moto runs children, see
`_express_children_as_standard`).

These patches reach into moto internals, so they are tied to the version they were
written and tested against: `check_moto_version()` refuses any other.
"""
from __future__ import annotations

import compileall
import contextlib
import copy
import functools
import hashlib
import importlib
import io
import json
import logging
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import traceback
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

from scones.errors import SconesError

TESTED_MOTO_VERSION = "5.2.5"


class EngineError(SconesError):
    """The local Step Functions engine cannot run (wrong moto, unloadable Lambda zip)."""


def _import_batch_utils_without_batch() -> None:
    """moto's ASL interpreter imports every service integration, among them Batch's, which
    needs only `moto.batch.utils.JobStatus`; but importing moto.batch.utils first runs
    moto/batch/__init__.py, which loads moto's Batch and EC2 backends (EC2 instance-type
    and region tables: about a second, most of a one-image run's import time). The
    package is registered with its search path but its __init__ deferred until an
    attribute of it is used (only a state machine calling Batch would), so utils imports
    on its own. Nothing changes for code that uses moto.batch: the first attribute access
    runs the real __init__."""
    import importlib.util
    import types

    if "moto.batch" in sys.modules:
        return
    spec = importlib.util.find_spec("moto.batch")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return
    module = importlib.util.module_from_spec(spec)

    class DeferredPackage(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            self.__class__ = types.ModuleType   # from now on an ordinary module
            spec.loader.exec_module(self)
            return getattr(self, name)

    module.__class__ = DeferredPackage
    sys.modules["moto.batch"] = module
    import moto
    moto.batch = module  # what importing it would have set on the parent package


def check_moto_version() -> None:
    import moto

    if moto.__version__ != TESTED_MOTO_VERSION:
        raise EngineError(
            f"the local workflow engine patches moto internals and is tested against moto "
            f"{TESTED_MOTO_VERSION}, but moto {moto.__version__} is installed: install the "
            f"pinned version (`make install`, constraints.txt)")


# --------------------------------------------------------------------------- lambdas


@dataclass
class LambdaContext:
    """The parts of AWS Lambda's context object handlers commonly read."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    timeout_s: int
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return self.timeout_s * 1000


def load_handler_from_zip(zip_bytes: bytes, handler: str, work_dir: Path,
                          extracted: bool = False) -> Callable:
    """The handler `module.path.function` of a Lambda zip, imported from that zip only.

    Like a Lambda container, the zip's root is the import root: its top-level packages
    (e.g. `lambdas`) shadow same-named modules already imported in this process while
    the handler module is imported, so a zip missing a module fails here as on AWS.
    extracted: work_dir already holds the zip's files (and the bytecode of an earlier run).
    """
    module_name, _, function_name = handler.rpartition(".")
    if not module_name or not function_name:
        raise EngineError(f"Lambda handler {handler!r} is not of the form module.function")
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
            if not extracted:
                archive.extractall(work_dir)
            roots = {Path(n).parts[0].removesuffix(".py") for n in archive.namelist()
                     if Path(n).parts}
    except zipfile.BadZipFile as exc:
        raise EngineError(f"Lambda code for handler {handler!r} is not a zip: {exc}") from None
    owned = lambda name: name.split(".")[0] in roots  # noqa: E731
    with _IMPORT_LOCK:
        shadowed = {name: sys.modules.pop(name) for name in list(sys.modules) if owned(name)}
        sys.path.insert(0, str(work_dir))
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EngineError(f"Lambda handler {handler!r}: cannot import {module_name!r} "
                              f"from the function's zip ({exc})") from None
        finally:
            sys.path.remove(str(work_dir))
            for name in [n for n in sys.modules if owned(n)]:
                del sys.modules[name]  # the handler keeps its modules; the process forgets them
            sys.modules.update(shadowed)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise EngineError(f"Lambda handler {handler!r}: {module_name} has no function "
                          f"{function_name!r}")
    return function


_IMPORT_LOCK = threading.Lock()


def _extracted_once(zip_bytes: bytes, cache: Path) -> Path:
    """<cache>/<sha256 of the zip>/ holding its files: extracted beside it and renamed into
    place, so a half-extracted folder is never used, and two processes at once both end
    with the same complete one."""
    folder = cache / hashlib.sha256(zip_bytes).hexdigest()
    if folder.is_dir():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=cache))
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
            archive.extractall(staging)
        # compiled here, explicitly: imports would not write bytecode where
        # PYTHONDONTWRITEBYTECODE is set, and would then compile the sources on every run
        compileall.compile_dir(staging, quiet=1)
        staging.rename(folder)
    except zipfile.BadZipFile:
        return staging  # load_handler_from_zip names the bad zip
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process put it there first
    return folder


class InProcessLambdas:
    """Runs moto's Lambda functions as handlers in this process, from their own zips.

    Handlers are loaded once per function and code version. Environment variables of the
    function are visible to the handler: when all functions agree (the usual case),
    `pin_environment` sets them once for the whole run and calls run concurrently;
    otherwise each call swaps them in under a lock.
    """

    def __init__(self, code_cache: Path | None = None) -> None:
        self._handlers: dict[tuple[str, str], Callable] = {}
        # code_cache: each zip's files are kept in <code_cache>/<sha256 of the zip>/ across
        # runs, so their bytecode is compiled once, not on every run (a tenth of the CPU of
        # one image's `workflow run`); without it, a temporary folder per run.
        self._code_cache = code_cache
        self._lock = threading.Lock()
        self._env_lock = threading.Lock()
        self._work_dir = Path(tempfile.mkdtemp(prefix="scones-lambdas-"))
        self._pinned: dict[str, str] = {}
        self._saved_env: dict[str, str | None] = {}
        self.direct_s3_region: str | None = None  # set: handlers read S3 via DirectS3Reads

    def close(self) -> None:
        shutil.rmtree(self._work_dir, ignore_errors=True)

    def handler_for(self, function: Any) -> Callable:
        key = (function.function_arn, function.code_sha_256)
        with self._lock:
            handler = self._handlers.get(key)
            if handler is None:
                if self._code_cache is not None:
                    folder = _extracted_once(function.code_bytes, self._code_cache)
                    handler = load_handler_from_zip(function.code_bytes, function.handler,
                                                    folder, extracted=True)
                else:
                    folder = self._work_dir / f"{function.function_name}-{len(self._handlers)}"
                    folder.mkdir(parents=True)
                    handler = load_handler_from_zip(function.code_bytes, function.handler,
                                                    folder)
                if self.direct_s3_region:
                    _direct_s3_clients(handler, self.direct_s3_region)
                self._handlers[key] = handler
        return handler

    def pin_environment(self, environments: list[dict[str, str]]) -> bool:
        """Set the functions' variables process-wide when they do not conflict."""
        merged: dict[str, str] = {}
        for env in environments:
            for key, value in env.items():
                if merged.setdefault(key, value) != value:
                    return False
        for key, value in merged.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        self._pinned.update(merged)
        return True

    def restore_environment(self) -> None:
        """Undo pin_environment."""
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        self._pinned.clear()

    def invoke(self, function: Any, event: Any) -> tuple[str, bool, str]:
        """(payload JSON, errored, logs), what moto's Docker path returns."""
        handler = self.handler_for(function)
        context = LambdaContext(function.function_name, function.function_arn,
                                int(function.memory_size), int(function.timeout))
        env = {k: str(v) for k, v in (function.environment_vars or {}).items()}
        if all(self._pinned.get(k) == v for k, v in env.items()):
            return self._call(handler, event, context)
        with self._env_lock, _environment(env):
            return self._call(handler, event, context)

    @staticmethod
    def _call(handler: Callable, event: Any, context: LambdaContext) -> tuple[str, bool, str]:
        try:
            result = handler(event, context)
        except Exception as exc:  # becomes the function error Step Functions matches on
            return _function_error(type(exc).__name__, str(exc), context,
                                   traceback.format_tb(exc.__traceback__)), True, ""
        try:
            return json.dumps(result), False, ""
        except (TypeError, ValueError) as exc:
            return _function_error("Runtime.MarshalError",
                                   f"Unable to marshal response: {exc}", context, []), True, ""


def _function_error(error_type: str, message: str, context: LambdaContext,
                    stack: list[str]) -> str:
    # The shape AWS Lambda's Python runtime reports for an exception.
    return json.dumps({"errorMessage": message, "errorType": error_type,
                       "requestId": context.aws_request_id,
                       "stackTrace": [line.rstrip() for line in stack]})


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------- moto


@dataclass
class LocalAws:
    """What `local_aws` yields: the in-process Lambdas, the region, and the ARNs of
    executions as they end (so a runner need not poll every running execution)."""

    region: str
    lambdas: InProcessLambdas
    execution_names: "_ExecutionNames" = field(default_factory=lambda: _ExecutionNames())
    _ended: "queue.SimpleQueue[str]" = field(default_factory=queue.SimpleQueue)

    def ended_executions(self, timeout: float) -> list[str]:
        """ARNs of executions that ended since the last call; waits up to `timeout`
        for the first one."""
        try:
            arns = [self._ended.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                arns.append(self._ended.get_nowait())
            except queue.Empty:
                return arns


class _ParsedDefinitions:
    """moto parses the ASL (ANTLR, ~30 ms) for every execution; the parsed program is a
    tree of declarations evaluated against a per-execution Environment, so one parse per
    definition serves every execution of it."""

    def __init__(self, parse: Callable[[str], Any]):
        self._parse = parse
        self._programs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def program_for(self, worker: Any) -> Any:
        definition = worker._evaluation_details.state_machine_details.definition
        with self._lock:
            program = self._programs.get(definition)
            if program is None:
                program = self._programs[definition] = self._parse(definition)[0]
        return program


class _CachedClients:
    """moto builds a new boto3 client for every Lambda task it runs (~10 ms each)."""

    def __init__(self, make: Callable[..., Any]):
        self._make = make
        self._clients: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def client_for(self, region: str, service: str, state_credentials: Any = None) -> Any:
        # moto's boto_client_for ignores state_credentials (fixed fake keys), so one
        # client per region and service is exactly what it would build each time.
        with self._lock:
            client = self._clients.get((region, service))
            if client is None:
                client = self._clients[(region, service)] = self._make(
                    region=region, service=service)
        return client


class _DirectLambdaTasks:
    """moto's lambda:invoke task sends Lambda.Invoke through a boto3 client into moto's
    HTTP emulation (signing, request parsing, response serialising: ~10 ms of CPU per
    task) only to land in `LambdaFunction.invoke`. This does what that path does, in
    the same order, without the HTTP: moto's Invoke handler (empty payload -> "{}",
    "Handled" function error, the 6 MB response limit) and the task's
    `_invoke_lambda_function` (payload parsed as JSON, else kept as text).

    Anything else - a function moto does not know (Lambda.ResourceNotFoundException),
    parameters beyond FunctionName/Qualifier/Payload - takes moto's own path unchanged.
    """

    PARAMETERS = frozenset({"FunctionName", "Qualifier", "Payload"})

    def __init__(self, invoke_through_moto: Callable[..., dict], lambdas: InProcessLambdas):
        self._invoke_through_moto = invoke_through_moto
        self._lambdas = lambdas

    def invoke(self, parameters: dict, region: str, state_credentials: Any) -> dict:
        from moto.awslambda.models import lambda_backends
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.stepfunctions.parser.asl.component.state.exec.state_task import (
            lambda_eval_utils)

        if not parameters.keys() <= self.PARAMETERS:
            return self._invoke_through_moto(parameters, region, state_credentials)
        # The account moto's request handler would resolve for the task's fake keys.
        account = os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)
        try:
            function = lambda_backends[account][region].get_function(
                parameters["FunctionName"], parameters.get("Qualifier"))
        except _moto_errors():  # moto's path turns it into the ClientError AWS gives
            return self._invoke_through_moto(parameters, region, state_credentials)
        body = parameters.get("Payload")
        payload, errored, _ = self._lambdas.invoke(function, json.loads(body) if body else "{}")
        response: dict[str, Any] = {"StatusCode": 200}
        payload_bytes = payload.encode("utf-8")
        if sys.getsizeof(payload_bytes) > 6000000:  # moto's Invoke response limit
            errored = True
            payload_bytes = json.dumps({
                "errorMessage": "Response payload size exceeded maximum allowed payload "
                                "size (6291556 bytes).",
                "errorType": "Function.ResponseSizeTooLarge"}).encode("utf-8")
        if errored:
            response["FunctionError"] = "Handled"
        response["Payload"] = lambda_eval_utils._from_payload(io.BytesIO(payload_bytes))
        return response


def _moto_errors() -> tuple[type[BaseException], ...]:
    """What moto's request handlers raise for an API error; its HTTP emulation turns
    them into the ClientError AWS would give."""
    from moto.core.exceptions import HTTPException, ServiceException

    return HTTPException, ServiceException


class DirectExecutions:
    """StartExecution and DescribeExecution on moto's Step Functions backend, without
    boto3 and moto's HTTP emulation: a run makes two of these calls per image from one
    thread, and through botocore (serialise, sign, parse) they took about half of the
    process's CPU. Same backend calls, same response fields as moto's
    StepFunctionResponse builds; executions started here are looked up by ARN rather
    than by moto's scan of every execution of the state machine.

    Any API error, and every other operation, goes through the boto3 client `client`,
    so callers see the ClientError they would get from it.
    """

    def __init__(self, client: Any, region: str, names: "_ExecutionNames | None" = None):
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.stepfunctions.responses import get_backend

        self._client = client
        self._names = names  # local_aws's index of execution names, told of releases
        self._backend = get_backend(os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID),
                                    region)
        self._executions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getattr__(self, operation: str) -> Any:
        return getattr(self._client, operation)

    def start_execution(self, *, stateMachineArn: str, name: str, input: str) -> dict:
        try:
            execution = self._backend.start_execution(stateMachineArn, name, input)
        except _moto_errors():
            return self._client.start_execution(stateMachineArn=stateMachineArn, name=name,
                                                input=input)
        with self._lock:
            self._executions[execution.execution_arn] = execution
        return {"executionArn": execution.execution_arn, "startDate": execution.start_date}

    def release(self, executionArn: str) -> None:
        """Forget an ended execution whose result has been read: moto keeps every
        execution (input, output, its whole event history, the state machine's snapshot)
        in its state machine's list for the process's life, ~80 KB an image, so a run of
        one execution per image grew without bound. Afterwards DescribeExecution and
        GetExecutionHistory of it answer ExecutionDoesNotExist, and its name can be used
        again (on AWS a name stays taken for 90 days; a run's names are unique anyway).
        A running or unknown execution is left alone."""
        with self._lock:
            execution = self._executions.get(executionArn)
            if execution is None or execution.status == "RUNNING":
                return
            del self._executions[executionArn]
        machine = self._backend.describe_state_machine(execution.state_machine_arn)
        if self._names is not None:
            self._names.forget(machine, execution)
        else:
            with contextlib.suppress(ValueError):
                machine.executions.remove(execution)

    def describe_execution(self, *, executionArn: str) -> dict:
        with self._lock:
            execution = self._executions.get(executionArn)
        if execution is None:
            return self._client.describe_execution(executionArn=executionArn)
        status = execution.status
        # What moto's StepFunctionResponse.describe_execution returns, field by field.
        response = {"executionArn": executionArn, "input": execution.execution_input,
                    "name": execution.name, "startDate": execution.start_date,
                    "stateMachineArn": execution.state_machine_arn, "status": status}
        if status in ("SUCCEEDED", "ABORTED", "FAILED"):
            response["stopDate"] = execution.stop_date
        if status == "SUCCEEDED":
            if isinstance(execution.output, str):
                response["output"] = execution.output
            elif execution.output is not None:
                response["output"] = json.dumps(execution.output)
            response["outputDetails"] = execution.output_details
        if execution.error is not None:
            response["error"] = execution.error
        if execution.cause is not None:
            response["cause"] = execution.cause
        return response


class DirectStaging:
    """PutObject of a run's input images straight into moto's S3 backend: the workflow
    reads them through S3 as on AWS (the serialize Lambda's GetObject still goes through
    boto3), but putting them there through botocore and moto's HTTP emulation cost as much
    CPU as a third of an execution. Stores what moto's PutObject handler stores for a
    plain put (the bytes, STANDARD class, the bucket's ACL); no client-side checksum
    header is sent, so none is recorded.

    Any API error (NoSuchBucket...), and every other operation, goes through the boto3
    client `client`, so callers see the ClientError they would get from it.
    """

    def __init__(self, client: Any, region: str):
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends
        from moto.utilities.utils import get_partition

        self._client = client
        self._region = region
        self._backend = s3_backends[os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)][
            get_partition(region)]

    def __getattr__(self, operation: str) -> Any:
        return getattr(self._client, operation)

    def create_bucket(self, *, Bucket: str) -> dict:
        """A new bucket in us-east-1, as moto's CreateBucket handler makes it there (no
        LocationConstraint, no ACL or lock headers); an existing bucket or another region
        (where moto's answer depends on a LocationConstraint) goes through boto3."""
        if Bucket in self._backend.buckets or self._region != "us-east-1":
            return self._client.create_bucket(Bucket=Bucket)
        try:
            self._backend.create_bucket(Bucket, self._region)
        except _moto_errors():
            return self._client.create_bucket(Bucket=Bucket)
        return {"Location": f"/{Bucket}"}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes) -> dict:
        try:
            bucket = self._backend.get_bucket(Bucket)
            key = self._backend.put_object(Bucket, Key, Body, storage="STANDARD")
        except _moto_errors():
            return self._client.put_object(Bucket=Bucket, Key=Key, Body=Body)
        key.set_acl(bucket.acl)
        return {"ETag": key.etag}

    def delete_object(self, *, Bucket: str, Key: str) -> dict:
        """DeleteObject, and the deleted key let go: moto tracks every model instance it
        makes (instances_tracked, for its reset) and keeps each key's buffer open until
        disposed, so a deleted key would stay in memory for the process's life."""
        from moto.s3.models import FakeKey

        try:
            key = self._backend.get_object(Bucket, Key)
            self._backend.delete_object(Bucket, Key)
        except _moto_errors():
            return self._client.delete_object(Bucket=Bucket, Key=Key)
        if isinstance(key, FakeKey) and Key not in self._backend.get_bucket(Bucket).keys:
            key.dispose()
            with contextlib.suppress(ValueError):
                FakeKey.instances_tracked.remove(key)  # type: ignore[attr-defined]
        return {}


class DirectS3Reads:
    """GetObject of an existing object straight from moto's S3 backend, for the
    in-process Lambdas' S3 client: through botocore and moto's HTTP emulation (serialise,
    sign, route, render headers, parse) one read cost ~1 ms of CPU, more than the bulk
    workflow's whole budget per image. A plain {Bucket, Key} read of an object moto holds
    gets what boto3 parses from moto's answer: Body (the same bytes), ContentLength,
    ContentType, ETag, LastModified (user Metadata left empty). Anything else (a missing bucket or key,
    Range, VersionId, conditions...) and every other operation go through the boto3
    client `client`, so callers see moto's own answers and ClientErrors."""

    PARAMETERS = frozenset({"Bucket", "Key"})

    def __init__(self, make_client: Callable[[], Any], region: str):
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.s3.models import FakeKey, s3_backends
        from moto.utilities.utils import get_partition

        self._make_client = make_client   # the real client, made only when needed
        self._fake_key = FakeKey
        self._backend = s3_backends[os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)][
            get_partition(region)]

    @property
    def _client(self) -> Any:
        return self._make_client()

    def __getattr__(self, operation: str) -> Any:
        return getattr(self._client, operation)

    def get_object(self, **params: Any) -> dict:
        from botocore.response import StreamingBody

        bucket = self._backend.buckets.get(params.get("Bucket"))
        key = bucket.keys.get(params.get("Key")) if bucket is not None else None
        if (not params.keys() <= self.PARAMETERS or type(key) is not self._fake_key
                or key.storage_class != "STANDARD"):
            return self._client.get_object(**params)
        value = key.value
        return {"Body": StreamingBody(io.BytesIO(value), len(value)),
                "ContentLength": len(value),
                "ContentType": key.metadata.get("Content-Type", "binary/octet-stream"),
                "ETag": key.etag, "LastModified": key.last_modified.replace(microsecond=0),
                "Metadata": {},  # user metadata is not carried: no Lambda of ours reads it
                "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {},
                                     "RetryAttempts": 0}}


def _direct_s3_clients(handler: Callable, region: str) -> None:
    """Give a handler loaded from its zip DirectS3Reads for its S3 client: its module's
    `aws_client` (lambdas.clients, imported by name) is wrapped, nothing else changes."""
    namespace = getattr(handler, "__globals__", {})
    make_client = namespace.get("aws_client")
    if not callable(make_client) or getattr(make_client, "_direct_s3", False):
        return
    direct = DirectS3Reads(lambda: make_client("s3"), region)

    def aws_client(service: str) -> Any:
        return direct if service == "s3" else make_client(service)

    aws_client._direct_s3 = True  # type: ignore[attr-defined]
    namespace["aws_client"] = aws_client


class DirectDeploy:
    """What a local run creates in moto before its first execution (two IAM roles, the
    Lambda functions, the state machines), through moto's backends: the same calls moto's
    request handlers make with the same arguments, without the boto3 clients (each loads
    its service model) and the HTTP emulation, about a second of a one-image run. Any moto
    error repeats the call through boto3, so callers get the ClientError AWS would give."""

    def __init__(self, region: str):
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.utilities.utils import get_partition

        self.region = region
        self.account = os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)
        self.partition = get_partition(region)

    def create_role(self, name: str, trust_policy: str) -> str:
        from moto.iam.models import iam_backends

        try:
            return iam_backends[self.account][self.partition].create_role(
                role_name=name, assume_role_policy_document=trust_policy, path="/",
                permissions_boundary=None, description="", tags=[],
                max_session_duration=None).arn
        except _moto_errors():
            import boto3
            return boto3.client("iam", region_name=self.region).create_role(
                RoleName=name, AssumeRolePolicyDocument=trust_policy)["Role"]["Arn"]

    def create_function(self, **spec: Any) -> None:
        """Arguments as for Lambda's CreateFunction; Code.ZipFile as bytes."""
        import base64

        from moto.awslambda.models import lambda_backends

        body = {**spec, "Code": {"ZipFile": base64.b64encode(spec["Code"]["ZipFile"]).decode()}}
        backend = lambda_backends[self.account][self.region]
        try:
            backend.create_function(body)   # moto's handler passes the request's JSON body
        except _moto_errors():
            import boto3
            boto3.client("lambda", region_name=self.region).create_function(**spec)

    def create_state_machine(self, name: str, definition: str, role_arn: str) -> str:
        from moto.stepfunctions.responses import get_backend

        try:
            return get_backend(self.account, self.region).create_state_machine(
                name=name, definition=definition, roleArn=role_arn).arn
        except _moto_errors():
            import boto3
            return boto3.client("stepfunctions", region_name=self.region).create_state_machine(
                name=name, definition=definition, roleArn=role_arn)["stateMachineArn"]


class _ExecutionNames:
    """moto checks a new execution's name against every execution of its state machine,
    a scan per start that makes a run quadratic in its images. Names are unique within a
    state machine (a repeat returns the running execution or raises), so an index of
    name -> execution, extended with the executions appended since the last look, finds
    the execution the scan would; the answer is then moto's own."""

    def __init__(self) -> None:
        # id(state machine) -> [its executions list, how many indexed, name -> execution]
        self._indexes: dict[int, list] = {}
        self._lock = threading.Lock()

    def handle_name_input_idempotency(self, state_machine: Any, name: str,
                                      execution_input: str) -> Any:
        from moto.stepfunctions.exceptions import ExecutionAlreadyExists

        executions = state_machine.executions
        with self._lock:
            index = self._indexes.get(id(state_machine))
            if index is None or index[0] is not executions or index[1] > len(executions):
                index = self._indexes[id(state_machine)] = [executions, 0, {}]
            for execution in executions[index[1]:]:
                index[2].setdefault(execution.name, execution)
            index[1] = len(executions)
            execution = index[2].get(name)
        if execution is None:
            return None
        # moto's rule, as in StateMachine._handle_name_input_idempotency
        if execution_input == execution.execution_input and execution.status == "RUNNING":
            return execution
        raise ExecutionAlreadyExists(
            "Execution Already Exists: '" + execution.execution_arn + "'")

    def forget(self, state_machine: Any, execution: Any) -> None:
        """Take an ended execution out of its state machine's list and out of the index
        (which counts the list's entries it has seen, so the count moves with it)."""
        executions = state_machine.executions
        with self._lock:
            try:
                position = executions.index(execution)
            except ValueError:
                return
            del executions[position]
            index = self._indexes.get(id(state_machine))
            if index is not None and index[0] is executions:
                if position < index[1]:
                    index[1] -= 1
                if index[2].get(execution.name) is execution:
                    del index[2][execution.name]


def _tracked_only(*kinds: type) -> Callable[..., Any]:
    """moto's BaseModel.__new__ appends every model it makes (a deep copy of the state
    machine per execution, an ACL and its grants per S3 object...) to its class's
    instances_tracked, read only by MotoServer's dashboard and, for S3 keys and uploads, by
    the reset that closes their buffers; a run never empties it. Track those kinds only
    (DirectStaging.delete_object lets a deleted key go)."""
    def new(cls: type, *args: Any, **kwargs: Any) -> Any:
        instance = object.__new__(cls)
        if issubclass(cls, kinds):
            cls.instances_tracked.append(instance)  # type: ignore[attr-defined]
        return instance
    return new


def _forget_finished_threads(threads: list) -> None:
    """moto's interpreter appends every thread it starts (three or more per execution) to
    a module-level list that nothing reads or empties (LocalStack's test clean-up list);
    each finished thread keeps its target's frame, the execution's whole Environment, alive:
    ~17 KB an image. Keep only the live ones. An append racing with this may be dropped
    from the list, which nothing reads."""
    threads[:] = [thread for thread in threads if thread.is_alive()]


def _cached_parse(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """moto parses each JSONPath (Payload.$, OutputPath, ResultPath) with a freshly built
    PLY parser at every state of every execution (~2 ms each); the parsed expression is
    only read when applied, so one parse per path string serves them all."""
    return functools.lru_cache(maxsize=1024)(parse)


def _express_children_as_standard(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """moto's ASL grammar accepts only "STANDARD" as a Distributed Map's
    ItemProcessor.ProcessorConfig.ExecutionType, though AWS takes "EXPRESS" (what the bulk
    workflow deploys, workflow/bulk.py). In moto the value changes nothing: every child
    runs the same way, as a worker thread of the parent execution. So the definition moto
    parses has EXPRESS read as STANDARD there and nowhere else; the stored definition
    (DescribeStateMachine) stays the one deployed."""
    # Memoised: CreateStateMachine's validation and the executions' _ParsedDefinitions
    # then parse a definition once (the parse is read-only afterwards, see there).
    @functools.lru_cache(maxsize=16)
    def parse_with_express(definition: str) -> Any:
        if '"EXPRESS"' in definition:
            definition = json.dumps(_standard_processors(json.loads(definition)))
        return parse(definition)

    return parse_with_express


def _standard_processors(node: Any) -> Any:
    if isinstance(node, dict):
        node = {key: _standard_processors(value) for key, value in node.items()}
        config = node.get("ProcessorConfig")
        if isinstance(config, dict) and config.get("ExecutionType") == "EXPRESS":
            node["ProcessorConfig"] = {**config, "ExecutionType": "STANDARD"}
        return node
    if isinstance(node, list):
        return [_standard_processors(value) for value in node]
    return node


def _s3_urls_once() -> Any:
    """moto's S3 backend re-imports moto.s3.urls (importlib.reload: stat, read, exec)
    twice per S3 request, in case S3 settings in the environment changed; they do not
    change during a run, so one reload at its start gives the same URL table."""
    import moto.s3.urls as s3_urls

    module = importlib.reload(s3_urls)
    return property(lambda backend: module)


def _mock_config(passthrough_urls: list[str]) -> dict:
    from moto.core.config import default_user_config

    core = copy.deepcopy(default_user_config.get("core", {}))
    passthrough = core.setdefault("passthrough", {})
    passthrough["urls"] = list(passthrough.get("urls") or []) + passthrough_urls
    passthrough.setdefault("services", [])
    return {"core": core, "stepfunctions": {"execute_state_machine": True},
            "lambda": {"use_docker": True}}


@contextlib.contextmanager
def local_aws(region: str, endpoint_url: str | None = None,
              code_cache: Path | None = None) -> Iterator[LocalAws]:
    """moto with Step Functions execution and in-process Lambdas, for one run.

    endpoint_url: the local SageMaker endpoint (http://127.0.0.1:PORT); boto3's
    sagemaker-runtime calls go there over real HTTP instead of to moto.
    """
    check_moto_version()
    _import_batch_utils_without_batch()
    from moto import mock_aws
    from moto.awslambda.models import LambdaFunction
    from moto.core import responses as moto_responses
    from moto.core.common_models import BaseModel
    from moto.s3.models import FakeKey, FakeMultipart, S3Backend
    from moto.stepfunctions.models import StateMachine
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.utils import json_path
    from moto.stepfunctions.parser.backend import execution, execution_worker
    from moto.stepfunctions.parser.utils import TMP_THREADS as moto_threads

    lambdas = InProcessLambdas(code_cache)
    lambdas.direct_s3_region = region
    aws = LocalAws(region=region, lambdas=lambdas)
    passthrough = [f"^{re.escape(endpoint_url.rstrip('/'))}/"] if endpoint_url else []
    env = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
    if endpoint_url:
        env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = endpoint_url

    def invoke_in_process(function: LambdaFunction, event: Any = None) -> tuple[str, bool, str]:
        return lambdas.invoke(function, {} if event is None else event)

    reflect_end = execution.BaseExecutionWorkerCommunication.terminated

    def terminated(communication: Any) -> None:
        reflect_end(communication)
        aws._ended.put(communication.execution.exec_arn)
        _forget_finished_threads(moto_threads)

    parse = _express_children_as_standard(AmazonStateLanguageParser.parse)
    programs = _ParsedDefinitions(parse)
    clients = _CachedClients(lambda_eval_utils.boto_client_for)
    lambda_tasks = _DirectLambdaTasks(lambda_eval_utils._invoke_lambda_function, lambdas)
    execution_names = aws.execution_names
    # The interpreter logs every failed state with its whole parse tree; the failure itself
    # is kept in the execution (error, cause, history), which is where we report it from.
    parser_log = logging.getLogger("moto.stepfunctions.parser")
    saved_level = parser_log.level
    parser_log.setLevel(logging.CRITICAL)
    try:
        with contextlib.ExitStack() as patches:
            patches.enter_context(_environment(env))
            patches.enter_context(mock_aws(config=_mock_config(passthrough)))
            patches.enter_context(mock.patch.object(
                LambdaFunction, "_invoke_lambda", invoke_in_process))
            patches.enter_context(mock.patch.object(
                AmazonStateLanguageParser, "parse", staticmethod(parse)))
            patches.enter_context(mock.patch.object(
                execution.BaseExecutionWorkerCommunication, "terminated", terminated))
            patches.enter_context(mock.patch.object(
                execution_worker.ExecutionWorker, "_get_evaluation_entrypoint",
                lambda worker: programs.program_for(worker)))
            patches.enter_context(mock.patch.object(
                lambda_eval_utils, "boto_client_for", clients.client_for))
            patches.enter_context(mock.patch.object(
                lambda_eval_utils, "_invoke_lambda_function", lambda_tasks.invoke))
            patches.enter_context(mock.patch.object(
                json_path, "parse", _cached_parse(json_path.parse)))
            patches.enter_context(mock.patch.object(S3Backend, "_url_module", _s3_urls_once()))
            patches.enter_context(mock.patch.object(
                BaseModel, "__new__", staticmethod(_tracked_only(FakeKey, FakeMultipart))))
            patches.enter_context(mock.patch.object(
                StateMachine, "_handle_name_input_idempotency",
                lambda machine, name, execution_input:
                execution_names.handle_name_input_idempotency(machine, name, execution_input)))
            # Each request lists its response class's methods (inspect.getmembers, ~1 ms);
            # classes do not grow methods during a run.
            patches.enter_context(mock.patch.object(
                moto_responses, "method_names_from_class",
                functools.lru_cache(maxsize=None)(moto_responses.method_names_from_class)))
            patches.enter_context(mock.patch.object(
                result_path, "parse", _cached_parse(result_path.parse)))
            try:
                yield aws
            finally:
                lambdas.restore_environment()
                _forget_finished_threads(moto_threads)
    finally:
        parser_log.setLevel(saved_level)
        lambdas.close()
