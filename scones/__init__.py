"""scones-mlops core: what the model build (pipelines/), the inference workflow (workflow/),
the AWS resources (infra/) and the front door (app/) share — typed config, errors, the
workspace, the object store, the model registry, console output — and the local/AWS seam
(backend.py), behind which the Docker-free twin (scones.local) lives."""


def __getattr__(name: str):
    """`scones.__version__`, looked up when asked for: importlib.metadata takes a tenth of a
    second to import, which every command would pay at start-up."""
    if name != "__version__":
        raise AttributeError(f"module 'scones' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scones-mlops")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"
