"""scones-mlops core: what the model build (pipelines/), the inference workflow (workflow/)
and the command line share — typed config, errors, the workspace, the object store, the model
registry, the local/AWS backend seam, console output — and, at the top, the CLIs and the demo."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("scones-mlops")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
