"""The staging test: the inference workflow pinned to a stage's endpoint, on images the
served version never saw; its verdict is what `scones endpoint promote` checks.

Above both workflow.stages (what a stage serves, where verdicts are kept) and workflow.run
(the workflow it runs), so neither of those imports the other's caller.
"""
from __future__ import annotations

import dataclasses
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from scones.backend import Backend, backend_for
from scones.config import Config
from scones.errors import DeploymentError
from scones.test_split import held_back_images, png_bytes
from workflow.run import ImageSource, run_workflow
from workflow.stages import record_stage_test, serving


def run_stage_test(config: Config, stage: str = "staging", backend: Backend | None = None,
               progress: bool = False) -> dict:
    """The staging test: the inference workflow (the same state machine and Lambdas) pinned
    to the stage's endpoint, on held-back images of the test split of the execution that
    built the version it serves; accuracy and failure rate against deployment.<stage>'s
    limits. The result is recorded with the version (promote reads it)."""
    backend = backend or backend_for(config)
    package = serving(config, stage, backend)
    endpoint = config.stage_endpoint_name(stage)
    if package is None:
        raise DeploymentError(f"{stage} endpoint {endpoint} serves nothing to test: approve a "
                              f"version (`scones registry approve N`) or `scones endpoint "
                              f"deploy --stage {stage} --version N`")
    limits = config.stage(stage)
    images, labels, classes = held_back_images(package, limits.test_images,
                                               backend.object_store())
    pinned = config.replace(workflow=dataclasses.replace(config.workflow,
                                                         endpoint_name=endpoint))
    with tempfile.TemporaryDirectory(prefix="scones-stage-test-") as folder:
        sources = []
        for n, (image, label) in enumerate(zip(images, labels)):
            path = Path(folder) / f"{classes[int(label)]}-{n:03d}.png"
            path.write_bytes(png_bytes(image))
            sources.append(ImageSource(label=path.name, path=path))
        # on AWS the stack's classify Lambda calls prod unless the input names staging
        results = run_workflow(pinned, sources, progress=progress, endpoint_name=endpoint)
    truth = {s.label: s.label.rpartition("-")[0] for s in sources}
    correct = sum(1 for r in results if r.predicted_label == truth.get(r.image))
    failed = [r for r in results if r.failed_otherwise]
    accuracy = correct / len(results)
    failure_rate = len(failed) / len(results)
    passed = accuracy >= limits.test_min_accuracy and failure_rate <= limits.test_max_failure_rate
    result = {
        "Stage": stage, "EndpointName": endpoint,
        "ModelPackageVersion": package["ModelPackageVersion"],
        "ModelPackageArn": package["ModelPackageArn"],
        "Images": len(results), "Accuracy": round(accuracy, 4),
        "FailureRate": round(failure_rate, 4),
        "MinAccuracy": limits.test_min_accuracy, "MaxFailureRate": limits.test_max_failure_rate,
        "Failures": sorted({r.error or r.status for r in failed}),
        "Passed": passed,
        "TestedAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record_stage_test(config, backend, result)
    return result
