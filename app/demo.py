"""`scones demo`: the whole story on the embedded default, in one command.

model build (the pipeline, on the shared data) -> approval -> deployment to the local
endpoint -> the inference workflow over images the model has never seen (the execution's
own test split) -> monitoring report. Every run adds a new model version, deployment and
report under the workspace; nothing earlier is deleted.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image

from app.retraining import start_retraining
from pipelines.pipeline import EVALUATE, PREPROCESS, REGISTER, TRAIN, pipeline_definition
from scones.backend import backend_for
from scones.config import Config
from scones.errors import SconesError
from workflow.monitoring import build_report, format_summary
from workflow.monitoring.check import format_run, run_monitor
from workflow.run import ImageSource, run_images, summary
from workflow.stage_test import run_stage_test
from workflow.stages import approve_and_deploy, endpoint_status, promote

REGISTER_STEP = f"{REGISTER}-RegisterModel"
STAGES = 7
DUSK = 0.35  # brightness factor of the demo's drifted batch


@dataclass
class DemoResult:
    execution_id: str
    model_version: int
    accuracy: float | None
    images: int
    correct: int
    met_threshold: int
    below_threshold: int
    failed: int
    report_path: Path
    seconds: float
    clean_violations: int
    drift_violations: int
    retraining_execution: str | None
    retraining_reason: str
    plots: dict[str, Path]


def processing_output_file(config: Config, execution, step: str, output: str,
                           name: str) -> Path:
    """Where file `name` of a processing step's output `output` lies in the object store."""
    outputs = execution.properties[step]["ProcessingOutputConfig"]["Outputs"]
    url = next(o["S3Output"]["S3Uri"] for o in outputs if o["OutputName"] == output)
    return backend_for(config).object_store().path_for(f"{url.rstrip('/')}/{name}")


def write_test_split_images(config: Config, execution, out_dir: Path, count: int) -> list[Path]:
    """PNG files of up to `count` test-split images of this execution, both classes evenly,
    named <true class>-<n>.png so the results can be checked against the truth."""
    with np.load(processing_output_file(config, execution, PREPROCESS, "test",
                                        "data.npz")) as split:
        images, labels = split["images"], split["labels"]
    out_dir.mkdir(parents=True, exist_ok=True)
    per_class = max(1, count // len(config.classes))
    paths = []
    for label, name in enumerate(config.classes):
        for n, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
            path = out_dir / f"{name}-{n:03d}.png"
            Image.fromarray(images[index]).save(path)
            paths.append(path)
    return paths


def run_demo(config: Config, sample_size: int = 40, out: TextIO = sys.stderr) -> DemoResult:
    backend = backend_for(config)
    backend.require_local("the demo runs on the embedded default (--env local)")

    started = time.monotonic()
    started_at = datetime.now(timezone.utc)

    def stage(number: int, title: str) -> None:
        print(f"\n=== [{number}/{STAGES}] {title} ({time.monotonic() - started:.0f} s) ===",
              file=out, flush=True)

    stage(1, "Model build: the SageMaker Pipeline definition, run locally")
    # the local executor's own result: its steps' logs and properties are shown below
    execution = backend.pipeline_executor().execute(pipeline_definition(config))
    if execution.status != "Succeeded":
        raise SconesError(f"pipeline execution {execution.execution_id} {execution.status}: "
                          f"{execution.failure_reason}")
    package = execution.properties[REGISTER_STEP]
    version = package["ModelPackageVersion"]
    plots = execution_plots(config, execution)
    for title, path in plots.items():
        print(f"{title}: {path}", file=out)

    stage(2, f"Approval: version {version} -> staging (health-checked before it takes traffic)")
    package, _, deployment = approve_and_deploy(
        config, version, f"approved by scones demo (execution {execution.execution_id})")
    print(f"version {version} Approved (accuracy on the test split: "
          f"{_fmt(package.get('Accuracy'))}); staging endpoint "
          f"{(deployment or {}).get('EndpointName', config.stage_endpoint_name('staging'))} "
          f"{(deployment or {}).get('Action', 'deployed')}", file=out)

    stage(3, "Staging test: the inference workflow on held-back test-split images")
    test = run_stage_test(config, "staging")
    print(f"{test['Images']} images: accuracy {test['Accuracy']} (min {test['MinAccuracy']}), "
          f"failure rate {test['FailureRate']} (max {test['MaxFailureRate']}): "
          f"{'passed' if test['Passed'] else 'FAILED'}", file=out)

    stage(4, "Promotion: staging's version -> prod (health check, bake, rollback on errors)")
    promoted = promote(config)
    print(f"prod endpoint {promoted.get('EndpointName')}: {promoted.get('Action')} with version "
          f"{promoted.get('ModelPackageVersion')}", file=out)
    for name in ("staging", "prod"):
        status = endpoint_status(config, stage=name)
        print(f"  {name}: {status.get('EndpointName')} {status.get('EndpointStatus')}, "
              f"version {status.get('ModelPackageVersion')}", file=out)

    stage(5, "Inference workflow (prod) on images the model has never seen")
    image_dir = backend.workspace.demo_dir / execution.execution_id / "images"
    paths = write_test_split_images(config, execution, image_dir, sample_size)
    print(f"{len(paths)} images of the execution's test split -> {image_dir}", file=out)
    results = run_images(config, [ImageSource(label=str(p), path=p) for p in paths])
    print(summary(results), file=out)
    correct = sum(1 for r in results
                  if r.predicted_label and Path(r.image).name.startswith(r.predicted_label + "-"))
    classified = sum(1 for r in results if r.predicted_label)
    print(f"correct predictions: {correct}/{classified}", file=out)

    stage(6, "Monitoring: what the endpoint saw (data capture)")
    report = build_report(config, since=started_at)
    print(format_summary(report.summary), file=out)

    stage(7, "Monitoring loop: this traffic against the version's baseline, then a drifted "
             "batch")
    clean = run_monitor(config, since=started_at)
    print(format_run(clean.summary), file=out)
    drifted_dir = image_dir.parent / "drifted"
    drifted_dir.mkdir(parents=True, exist_ok=True)
    drifted_paths = []
    for path in paths:  # the same photos at a third of their brightness: a dusk camera
        darker = (np.asarray(Image.open(path).convert("RGB")) * DUSK).astype(np.uint8)
        Image.fromarray(darker).save(drifted_dir / path.name)
        drifted_paths.append(drifted_dir / path.name)
    print(f"{len(drifted_paths)} darkened copies -> {drifted_dir}", file=out)
    run_images(config, [ImageSource(label=str(p), path=p) for p in drifted_paths],
                         progress=False)
    drifted = run_monitor(config)
    print(format_run(drifted.summary), file=out)
    labelled = label_captured_traffic(config, drifted_paths, drifted_dir / "labels.jsonl")
    print(f"ground truth for {labelled['Labels']} darkened picture(s) -> `monitor label`: what "
          "retraining learns from", file=out)
    retraining = start_retraining(config, drifted)
    print(f"retraining: {retraining['Reason']}"
          + (f" -> execution {retraining['ExecutionId']} {retraining['Status']}, version "
             f"{retraining.get('ModelPackageVersion')} registered for review"
             if retraining.get("Started") else ""), file=out)

    result = DemoResult(
        execution_id=execution.execution_id, model_version=version,
        accuracy=package.get("Accuracy"), images=len(results), correct=correct,
        met_threshold=sum(r.meets_threshold is True for r in results),
        below_threshold=sum(r.meets_threshold is False for r in results),
        failed=sum(r.failed_otherwise for r in results),
        report_path=report.markdown_path, seconds=round(time.monotonic() - started, 1),
        clean_violations=len(clean.violations), drift_violations=len(drifted.violations),
        retraining_execution=retraining.get("ExecutionId"),
        retraining_reason=retraining["Reason"],
        plots={**plots, **{f"monitoring, {name.replace('_', ' ')}": path
                          for name, path in report.plots.items()},
               **{f"drifted batch, {name.replace('_', ' ')}": path
                  for name, path in drifted.plots.items()}})
    return result


def label_captured_traffic(config: Config, paths: list[Path], labels_file: Path) -> dict:
    """Play the person who labels traffic: the captured requests whose bytes are one of
    `paths` (named <true class>-<n>.png) get their true class as SageMaker groundTruthData
    records, ingested as `scones monitor label` does."""
    import base64
    import hashlib
    import json

    from workflow.monitoring import default_source, iter_capture_files, parse_capture_lines
    from workflow.monitoring.check import ingest_labels

    truth = {hashlib.sha256(p.read_bytes()).hexdigest(): p.name.split("-")[0] for p in paths}
    lines = []
    for name, content in iter_capture_files(config, default_source(config)):
        for record in parse_capture_lines(name, content, len(config.classes))[0]:
            if record.input_base64 is None or record.event_id is None:
                continue
            label = truth.get(hashlib.sha256(base64.b64decode(record.input_base64)).hexdigest())
            if label:
                lines.append(json.dumps({"groundTruthData": {"data": label, "encoding": "CSV"},
                                         "eventMetadata": {"eventId": record.event_id},
                                         "eventVersion": "0"}))
    labels_file.write_text("".join(line + "\n" for line in lines))
    return ingest_labels(config, str(labels_file))


def execution_plots(config: Config, execution) -> dict[str, Path]:
    """The PNGs a person wants to look at after a run: the training curves (in the training
    job's output data) and the confusion matrix (beside evaluation.json)."""
    plots = {}
    train = next((s for s in execution.steps if s.name == TRAIN and s.log_path), None)
    if train:
        curves = Path(train.log_path).parent / "output" / "data" / "training_curves.png"
        if curves.is_file():
            plots["training curves"] = curves
    matrix = processing_output_file(config, execution, EVALUATE, "evaluation",
                                    "confusion_matrix.png")
    if matrix.is_file():
        plots["confusion matrix"] = matrix
    reliability = matrix.with_name("reliability_diagram.png")
    if reliability.is_file():
        plots["reliability diagram"] = reliability
    return plots


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def studio_command(config: Config) -> str:
    """The command that opens all of the above in the browser (the local Studio)."""
    workspace = Path(config.local.workspace).resolve()
    default = (Path.cwd() / ".scones").resolve()
    return ".venv/bin/scones ui" + ("" if workspace == default
                                    else f" --set local.workspace={workspace}")
