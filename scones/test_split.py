"""The held-back test split of a registered model version: the images it never saw, for
the local health check and bake (scones.local.guardrails) and the staging test
(workflow.stage_test), read from the pipeline execution that built it."""
from __future__ import annotations

import io

import numpy as np

from scones.errors import DeploymentError, SconesError
from scones.registry import TEST_DATA_PROPERTY, evaluation_url
from scones.storage import LocalObjectStore, S3ObjectStore


def held_back_images(package: dict, limit: int, store: LocalObjectStore | S3ObjectStore):
    """(images uint8 N x H x W x 3, labels, class names) from the test split of the pipeline
    execution that built `package`: Preprocess's "test" output (data.npz) beside the
    evaluation its ModelMetrics point to (<pipeline>/<execution>/Evaluate/... ->
    <pipeline>/<execution>/Preprocess/output/test/data.npz). Images the model never saw;
    an even share of each class."""
    recorded = (package.get("CustomerMetadataProperties") or {}).get(TEST_DATA_PROPERTY)
    url = evaluation_url(package) or ""
    if recorded:
        split_url = recorded.rstrip("/") + "/data.npz"
    elif "/Evaluate/" in url:  # versions registered before TestDataUrl was recorded
        split_url = url.split("/Evaluate/")[0] + "/Preprocess/output/test/data.npz"
    else:
        raise DeploymentError(
            f"version {package.get('ModelPackageVersion')} has no evaluation in its "
            "ModelMetrics, so the pipeline execution (and its test split) that built it is "
            "unknown: register versions with `scones pipeline run`")
    try:
        data = np.load(io.BytesIO(store.read_bytes(split_url)))
    except SconesError as exc:
        raise DeploymentError(f"the test split of version {package.get('ModelPackageVersion')}"
                              f" ({split_url}) cannot be read: {exc}") from None
    images, labels = data["images"], data["labels"]
    classes = [str(c) for c in data["class_names"]]
    per_class = max(1, limit // len(classes))
    chosen = [i for label in range(len(classes))
              for i in np.flatnonzero(labels == label)[:per_class]][:limit]
    return images[chosen], labels[chosen], classes


def png_bytes(image) -> bytes:
    """A uint8 H x W x 3 array as PNG bytes, as a client would send it."""
    from PIL import Image  # lazily: Pillow is needed only when an image is sent

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
