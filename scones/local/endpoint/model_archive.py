"""A model.tar.gz loaded the way SageMaker's PyTorch serving container does: extract it,
import code/inference.py in isolation, call model_fn(model_dir); per request input_fn ->
predict_fn -> output_fn. And which archive to serve when no deployment says so."""
from __future__ import annotations

import importlib.util
import shutil
import sys
import tarfile
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scones.config import Config
from scones.errors import SconesError
from scones.local.resources import LocalResources

# What SageMaker's inference toolkit answers when the caller accepts anything.
DEFAULT_ACCEPT = "application/json"

_IMPORT_LOCK = threading.Lock()  # sys.path is process-wide: one model import at a time



class ModelLoadError(SconesError):
    """A model archive that cannot be served: missing, not a tarball, or no usable code."""


@dataclass
class ServedModel:
    """One model.tar.gz, extracted and loaded through its own code/inference.py."""

    tar_path: Path
    version: int | None
    package_arn: str | None
    source: str                 # where the choice came from, for humans
    model_dir: Path
    module: Any
    model: Any

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        """input_fn -> predict_fn -> output_fn, as the PyTorch serving container does."""
        data = self.module.input_fn(body, content_type)
        prediction = self.module.predict_fn(data, self.model)
        result = self.module.output_fn(prediction, accept)
        if isinstance(result, tuple):  # the toolkit lets output_fn pick the content type
            result, accept = result
        if isinstance(result, str):
            result = result.encode("utf-8")
        return bytes(result), accept

    def close(self) -> None:
        shutil.rmtree(self.model_dir, ignore_errors=True)


def load_model_archive(tar_path: Path, *, version: int | None = None,
                       package_arn: str | None = None, source: str = "") -> ServedModel:
    """Extract model.tar.gz to a fresh folder and load it through code/inference.py."""
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
        missing = [name for name in ("model_fn", "input_fn", "predict_fn", "output_fn")
                   if not callable(getattr(module, name, None))]
        if missing:
            raise ModelLoadError(f"{tar_path}: code/inference.py lacks {', '.join(missing)}")
        model = module.model_fn(str(model_dir))
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise
    return ServedModel(tar_path=tar_path, version=version, package_arn=package_arn,
                       source=source, model_dir=model_dir, module=module, model=model)


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
