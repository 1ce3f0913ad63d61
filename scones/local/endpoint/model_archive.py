"""A model.tar.gz served the way SageMaker's PyTorch serving container serves it: extract
it, import code/inference.py, and hand it to sagemaker-inference's Transformer (the
container's own handler chain: model_fn once, then per request input_fn -> predict_fn ->
output_fn, with the toolkit's content-type, accept and error handling). What the container
would refuse is refused here too, with the same status. And which archive to serve when no
deployment says so."""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
import tarfile
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from scones.config import Config
from scones.errors import SconesError
from scones.local.resources import LocalResources

if TYPE_CHECKING:
    from sagemaker_inference.transformer import Transformer

LOG = logging.getLogger("scones.endpoint")
_IMPORT_LOCK = threading.Lock()  # sys.path and sys.modules are process-wide



class ModelLoadError(SconesError):
    """A model archive that cannot be served: missing, not a tarball, or no usable code."""


class ClassNamesMismatch(ModelLoadError):
    """The model archive's class_names (the order of its probabilities) are not the config's
    `classes`: serving it would put every label on the wrong probability."""


class InvocationError(Exception):
    """An invocation the model code refused (its 4xx status) or failed (500): what the
    container's toolkit answered, status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _RequestProcessor:
    def __init__(self, headers: dict[str, str]):
        self._headers = headers

    def get_request_properties(self) -> dict[str, str]:
        return self._headers


class ToolkitContext:
    """The part of the model server's per-request context (TorchServe's Context) that
    sagemaker-inference's Transformer reads and writes."""

    def __init__(self, model_dir: str, headers: dict[str, str]):
        self.system_properties = {"model_dir": model_dir}
        self.request_processor = [_RequestProcessor(headers)]
        self.status, self.phrase, self.content_type = 200, "OK", None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status, self.phrase = code, phrase

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type = value


@dataclass
class ServedModel:
    """One model.tar.gz, extracted and served through its own code/inference.py."""

    tar_path: Path
    version: int | None
    package_arn: str | None
    source: str                 # where the choice came from, for humans
    model_dir: Path
    module: Any
    transformer: Transformer
    class_names: list[str] | None = None   # model_config.json's, when the archive has one

    @property
    def model(self) -> Any:
        """What model_fn returned."""
        return self.transformer._model

    def invoke(self, body: bytes, content_type: str | None,
               accept: str | None) -> tuple[bytes, str]:
        """The answer's bytes and content type, as the container's toolkit gives them;
        InvocationError(status, message) where it answers an error."""
        headers = {"Content-Type": content_type} if content_type else {}
        if accept:
            headers["Accept"] = accept
        context = ToolkitContext(str(self.model_dir), headers)
        result = self.transformer.transform([{"body": body}], context)[0]
        if context.status != 200:
            if context.status >= 500:  # the model code failed: its traceback goes to the log
                LOG.error("model version %s failed a request: %s", self.version, result)
            raise InvocationError(context.status, context.phrase or "model error")
        if isinstance(result, str):
            result = result.encode("utf-8")
        elif not isinstance(result, (bytes, bytearray)):
            result = json.dumps(result).encode("utf-8")  # what the model server does
        from sagemaker_inference import environment as toolkit_environment  # see _transformer

        return bytes(result), context.content_type or toolkit_environment.Environment().default_accept

    def close(self) -> None:
        shutil.rmtree(self.model_dir, ignore_errors=True)


def _class_names(model_dir: Path) -> list[str] | None:
    try:
        names = json.loads((model_dir / "model_config.json").read_text()).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(name) for name in names] if isinstance(names, list) else None


def check_class_names(served: "ServedModel", expected: Sequence[str] | None) -> None:
    """ClassNamesMismatch unless the archive's class_names are `expected`, in order (an
    archive without model_config.json class_names is not checked)."""
    if expected is None or served.class_names is None:
        return
    if list(served.class_names) != [str(name) for name in expected]:
        raise ClassNamesMismatch(
            f"{served.tar_path}: the model answers its probabilities in the order "
            f"{served.class_names} (its model_config.json class_names), but the config's "
            f"classes are {list(expected)}: every label would be put on the wrong "
            f"probability. Set classes to {served.class_names} (e.g. --set 'classes="
            f"[{', '.join(served.class_names)}]'), or serve a model trained on "
            f"{list(expected)}")


def load_model_archive(tar_path: Path, *, version: int | None = None,
                       package_arn: str | None = None, source: str = "",
                       expected_classes: Sequence[str] | None = None) -> ServedModel:
    """Extract model.tar.gz to a fresh folder and load it through code/inference.py under
    the toolkit's Transformer. expected_classes (the config's classes): a ClassNamesMismatch
    when the archive's own class_names differ."""
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise ModelLoadError(f"model archive not found: {tar_path}")
    model_dir = Path(tempfile.mkdtemp(prefix="scones-model-"))
    try:
        try:
            with tarfile.open(tar_path, "r:*") as archive:
                archive.extractall(model_dir, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise ModelLoadError(f"{tar_path}: not a readable model.tar.gz ({exc})") from None
        script = model_dir / "code" / "inference.py"
        if not script.is_file():
            raise ModelLoadError(f"{tar_path}: has no code/inference.py, so the serving "
                                 "container would not know how to load it")
        module = _import_isolated(script, f"_scones_inference_{uuid.uuid4().hex}")
        # The container would fall back on its framework's defaults (a TorchScript
        # model.pth); these archives always ship their own functions, so a missing one is
        # a broken archive here.
        missing = [name for name in ("model_fn", "input_fn", "predict_fn", "output_fn")
                   if not callable(getattr(module, name, None))]
        if missing:
            raise ModelLoadError(f"{tar_path}: code/inference.py lacks {', '.join(missing)}")
        served = ServedModel(tar_path=tar_path, version=version, package_arn=package_arn,
                             source=source, model_dir=model_dir, module=module,
                             transformer=_transformer(module, model_dir),
                             class_names=_class_names(model_dir))
        check_class_names(served, expected_classes)
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise
    return served


def _transformer(module, model_dir: Path) -> Transformer:
    """The toolkit's Transformer, initialised (model_fn run) with `module` as its user
    module. The toolkit imports the module by name (SAGEMAKER_PROGRAM, "inference"): it
    is put under that name only while the Transformer looks it up, so two models'
    inference.py can serve side by side in one process."""
    # lazily: sagemaker-inference brings scipy (about a second on 2 busy cores), which a
    # `workflow run` that only finds the running endpoint would pay for nothing
    from sagemaker_inference import environment as toolkit_environment
    from sagemaker_inference.transformer import Transformer

    transformer = Transformer()
    name = toolkit_environment.Environment().module_name
    with _IMPORT_LOCK:
        before = sys.modules.get(name)
        sys.modules[name] = module
        try:
            transformer.validate_and_initialize(
                model_dir=str(model_dir), context=ToolkitContext(str(model_dir), {}))
        finally:
            if before is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = before
    return transformer


def _import_isolated(script: Path, unique_name: str):
    """Import a model's inference.py under a unique name, its code/ folder on sys.path only
    while importing, so two models' code (both 'inference') can live in one process."""
    code_dir = str(script.parent)
    with _IMPORT_LOCK:
        sys.path.insert(0, code_dir)
        try:
            spec = importlib.util.spec_from_file_location(unique_name, script)
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(unique_name, None)
                raise
        finally:
            sys.path.remove(code_dir)
    return module


@dataclass(frozen=True)
class ModelChoice:
    tar_path: Path
    version: int | None
    package_arn: str | None
    source: str


def choose_from_registry(config: Config, model_version: int | None = None) -> ModelChoice:
    """The explicit version, else the newest Approved, else the newest registered one."""
    registry = LocalResources(config).registry()
    if model_version is not None:
        package = registry.describe(model_version)
        source = f"model version {model_version} (chosen explicitly)"
    else:
        package = registry.latest(status="Approved")
        source = "newest Approved version in the registry"
        if package is None:
            candidates = [p for p in registry.list_packages()
                          if p.get("ModelApprovalStatus") != "Rejected"]
            if not candidates:
                raise SconesError("no model to serve: the registry has no registered model "
                                  "version - run `scones pipeline run` first")
            newest = max(candidates, key=lambda p: int(p["ModelPackageVersion"]))
            package = registry.describe(int(newest["ModelPackageVersion"]))
            source = "newest registered version (none is Approved yet)"
            print(f"warning: no model version is Approved yet; serving version "
                  f"{package['ModelPackageVersion']} "
                  f"({package.get('ModelApprovalStatus')}) - approve one with "
                  "`scones registry approve`", file=sys.stderr)
    local = package.get("LocalModelData")
    if not local:
        raise SconesError(f"model version {package.get('ModelPackageVersion')} has no local "
                          "model.tar.gz (LocalModelData); it was not built locally")
    return ModelChoice(Path(local), int(package["ModelPackageVersion"]),
                       package.get("ModelPackageArn"), source)
