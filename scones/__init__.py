"""scones-mlops core: what the model build (pipelines/), the inference workflow (workflow/),
the AWS resources (infra/) and the front door (app/) share — typed config, errors, the
workspace, the object store, the model registry, console output — and the local/AWS seam
(backend.py), behind which the Docker-free twin (scones.local) lives."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("scones-mlops")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
