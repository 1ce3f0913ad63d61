"""The inference workflow end to end on the embedded default: the SDK's ASL in moto's
Step Functions engine, the Lambdas from their built zips, the real local endpoint."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import deploy_locally, register_model
from scones.config import load_config
from scones.errors import SconesError
from scones.storage import LocalObjectStore
from workflow.run import summary
from scones.local.deployment_state import EndpointStateFile
from workflow.run import ImageSource, images_from_options, run_images

# Each test takes tens of seconds: the workflow deployed into moto with a running endpoint.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULT_KEYS = {"Image", "Status", "PredictedLabel", "Confidence", "Inferences",
               "MeetsThreshold", "Verdict", "Error", "Cause", "Seconds"}


def real_images(sample_data_dir: Path, per_class: int) -> list[Path]:
    return [p for name in ("bicycle", "motorcycle")
            for p in sorted((sample_data_dir / name).glob("*.png"))[:per_class]]


def json_lines(run: subprocess.CompletedProcess) -> list[dict]:
    """stdout of `--json` as objects; anything else on stdout is a failure, shown whole."""
    try:
        return [json.loads(line) for line in run.stdout.splitlines()]
    except ValueError as exc:
        raise AssertionError(f"stdout is not pure JSON lines ({exc}):\n{run.stdout}\n"
                             f"--- stderr\n{run.stderr}") from None


def test_images_from_the_object_store_pass_or_fail_each_by_name(tmp_path, sample_data_dir,
                                                                small_model_tar):
    config = load_config("local", {"local.workspace": str(tmp_path / "ws"),
                                   "workflow.confidence_threshold": 0.0})
    deploy_locally(config, small_model_tar)
    store = LocalObjectStore(config.local.workspace / "s3")
    good = real_images(sample_data_dir, 2)
    for path in good:
        store.write_bytes(f"s3://incoming/batch/{path.parent.name}-{path.name}", path.read_bytes())
    store.write_bytes("s3://incoming/batch/z-notes.txt", b"a text file, not an image\n")
    store.write_bytes("s3://incoming/batch/z-empty.png", b"")
    store.write_bytes("s3://incoming/batch/z-truncated.png", good[0].read_bytes()[:60])
    jpeg = io.BytesIO()
    Image.open(good[0]).convert("RGB").save(jpeg, format="JPEG")
    store.write_bytes("s3://incoming/batch/z-truncated.jpg", jpeg.getvalue()[:200])
    sources = images_from_options(config, prefix="s3://incoming/batch/")
    sources.append(ImageSource(label="s3://incoming/missing.png",
                               s3_url="s3://incoming/missing.png"))

    results = {r.image: r for r in run_images(config, sources, progress=False)}

    assert len(results) == len(good) + 5
    for path in good:
        result = results[f"s3://incoming/batch/{path.parent.name}-{path.name}"]
        assert result.status == "SUCCEEDED", result
        assert result.meets_threshold is True and result.error is None
        assert result.predicted_label in config.classes
        assert len(result.inferences) == 2 and abs(sum(result.inferences) - 1) < 1e-4
        assert result.predicted_label == config.classes[result.inferences.index(max(result.inferences))]
    expected_errors = {"s3://incoming/batch/z-notes.txt": "InvalidImage",
                       "s3://incoming/batch/z-empty.png": "InvalidImage",
                       # a cut PNG is caught by its missing IEND chunk; a cut JPEG only
                       # by the model's decoder, which answers 4xx through the endpoint
                       "s3://incoming/batch/z-truncated.png": "InvalidImage",
                       "s3://incoming/batch/z-truncated.jpg": "EndpointError",
                       "s3://incoming/missing.png": "ImageNotFound"}
    for image, error in expected_errors.items():
        result = results[image]
        assert (result.status, result.error) == ("FAILED", error), result
        assert result.cause and result.meets_threshold is None and result.failed_otherwise
    assert "0 bytes" in results["s3://incoming/batch/z-empty.png"].cause
    # The classify Lambda really went to the local endpoint: it captured each request.
    captured = list((config.local.workspace / "s3" / config.aws.bucket / "datacapture").rglob("*.jsonl"))
    assert sum(len(p.read_text().splitlines()) for p in captured) == len(good)
    # Nothing of the run leaks into the process: the functions' environment is undone.
    assert "CONFIDENCE_THRESHOLD" not in os.environ and "ENDPOINT_NAME" not in os.environ

    text = summary(list(results.values()))
    assert f"{len(good)} met the confidence threshold" in text and "5 failed" in text
    assert re.search(r"^InvalidImage +3 *$", text, flags=re.M), text


def test_cli_json_lines_report_threshold_not_met_with_inferences(tmp_path, sample_data_dir,
                                                                 small_model_tar):
    workspace = tmp_path / "ws"
    config = load_config("local", {"local.workspace": str(workspace)})
    deploy_locally(config, small_model_tar)
    folder = tmp_path / "images"
    folder.mkdir()
    for path in real_images(sample_data_dir, 2):
        (folder / path.name).write_bytes(path.read_bytes())
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    command = [sys.executable, "-m", "app.cli.main", "workflow", "run", "--images", str(folder),
               "--json", "--set", f"local.workspace={workspace}",
               "--set", "workflow.confidence_threshold=0.9999",
               "--endpoint-idle-minutes", "0"]  # leave no endpoint running after the test

    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                         timeout=300)

    assert run.returncode == 0, run.stderr  # threshold misses are results, not failures
    lines = json_lines(run)
    assert len(lines) == 4 and all(set(line) == RESULT_KEYS for line in lines)
    not_met = [line for line in lines if line["MeetsThreshold"] is False]
    assert not_met, lines  # a 3-epoch model is never 99.99 % sure of everything
    for line in not_met:
        assert (line["Status"], line["Error"]) == ("FAILED", "ThresholdConfidenceNotMet")
        assert line["Verdict"] == "below threshold"
        assert line["Confidence"] == max(line["Inferences"]) < 0.9999
        assert line["PredictedLabel"] == config.classes[
            line["Inferences"].index(max(line["Inferences"]))]

    (folder / "readme.txt").write_text("not an image")
    failing = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                             timeout=300)
    assert failing.returncode == 1  # an image failed for another reason than the threshold
    by_image = {line["Image"]: line for line in json_lines(failing)}
    assert by_image[str(folder / "readme.txt")]["Error"] == "InvalidImage"
    assert by_image[str(folder / "readme.txt")]["Verdict"] == "InvalidImage"

    as_csv = subprocess.run([*command[:command.index("--json")], "--csv", *command[
        command.index("--json") + 1:]], capture_output=True, text=True, cwd=REPO_ROOT, env=env,
        timeout=300)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {row["Image"]: row["Verdict"] for row in rows} == {
        image: line["Verdict"] for image, line in by_image.items()}


def test_image_options_name_what_is_wrong(tmp_path):
    config = load_config("local", {"local.workspace": str(tmp_path / "ws")})
    with pytest.raises(SconesError, match="no such file"):
        images_from_options(config, image=str(tmp_path / "nope.png"))
    with pytest.raises(SconesError, match="exactly one of"):
        images_from_options(config, image="a.png", s3="s3://b/k")
    with pytest.raises(SconesError, match="no objects under it"):
        images_from_options(config, prefix="s3://empty-bucket/images/")
    with pytest.raises(SconesError, match="not an s3:// URL"):
        images_from_options(config, s3="bucket/key.png")


def test_definition_is_cached_on_disk_keyed_by_what_it_depends_on(tmp_path):
    workspace = tmp_path / "ws"
    code = ("import json, sys\n"
            "from scones.config import load_config\n"
            "from workflow.definition import workflow_definition_json\n"
            "config = load_config('local', {'local.workspace': sys.argv[1], "
            "'workflow.lambda_prefix': sys.argv[2]})\n"
            "text = workflow_definition_json(config)\n"
            "print(json.dumps({'sdk_imported': 'stepfunctions' in sys.modules, "
            "'names': sorted(s['Parameters']['FunctionName'] for s in "
            "json.loads(text)['States'].values() if s['Type'] == 'Task')}))\n")

    def build(prefix: str) -> dict:
        run = subprocess.run([sys.executable, "-c", code, str(workspace), prefix],
                             capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    first, again = build("scones"), build("scones")
    assert first["sdk_imported"] and not again["sdk_imported"]  # the cache served it
    assert again["names"] == first["names"] == ["scones-classify-image",
                                                "scones-filter-inferences",
                                                "scones-serialize-image-data"]
    other = build("other")   # a config value that goes into the ASL: a new key, rebuilt
    assert other["sdk_imported"] and other["names"][0] == "other-classify-image"
    assert len(list((workspace / "cache" / "asl").glob("inference-*.json"))) == 2


def test_cli_leaves_an_endpoint_in_the_background_and_the_next_run_reuses_it(
        tmp_path, sample_data_dir, small_model_tar):
    import signal
    import time

    from scones.local.endpoint.background import find_running, running_file

    workspace = tmp_path / "ws"
    config = load_config("local", {"local.workspace": str(workspace)})
    deploy_locally(config, small_model_tar)
    image = real_images(sample_data_dir, 1)[0]
    command = [sys.executable, "-m", "app.cli.main", "workflow", "run", "--image", str(image),
               "--json", "--set", f"local.workspace={workspace}", "--endpoint-idle-minutes", "2"]
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    try:
        first = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                               timeout=300)
        assert first.returncode == 0, first.stderr
        assert "starting the local endpoint in the background" in first.stderr
        running = find_running(config)
        assert running is not None and running.owner == "background"
        second = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                                env=env, timeout=300)
        assert second.returncode == 0, second.stderr
        assert f"using the running endpoint at {running.url}" in second.stderr
        assert json_lines(second)[0]["Inferences"] == json_lines(first)[0]["Inferences"]
    finally:
        running = find_running(config)
        if running is not None:
            os.kill(running.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while running_file(config).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running_file(config).exists()  # it unregistered itself on SIGTERM


def test_background_endpoint_stops_itself_when_idle(tmp_path, small_model_tar):
    import time

    from scones.local.endpoint.background import find_running, running_file, start_background

    config = load_config("local", {"local.workspace": str(tmp_path / "ws")})
    deploy_locally(config, small_model_tar)
    started = start_background(config, idle_timeout_s=2.0, progress=False)
    assert find_running(config) == started
    deadline = time.monotonic() + 60
    while running_file(config).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running_file(config).exists()
    assert find_running(config) is None
    for _ in range(100):   # the process ended by itself, cleanly (it is our child here)
        pid, status = os.waitpid(started.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.2)
    assert pid == started.pid and os.waitstatus_to_exitcode(status) == 0


def test_the_filter_applies_the_threshold_registered_with_the_deployed_version(
        tmp_path, sample_data_dir, small_model_tar):
    """The threshold train.py chose travels with the version (CustomerMetadataProperties)
    and deployment hands it to the filter; workflow.confidence_threshold is the override."""
    from workflow.stages import deploy_model_package, with_model_threshold
    from workflow.run import ImageSource, run_workflow

    config = load_config("local", {"local.workspace": str(tmp_path / "ws"),
                                   "workflow.confidence_threshold": 0.0})
    register_model(config, small_model_tar, ModelApprovalStatus="Approved",
                   CustomerMetadataProperties={"ConfidenceThreshold": "0.99999"})
    deploy_model_package(config, 1, stage="prod")
    assert with_model_threshold(config).workflow.confidence_threshold == 0.99999
    images = [ImageSource(label=str(p), path=p) for p in real_images(sample_data_dir, 2)]

    strict = run_workflow(config, images, progress=False)
    assert [r.error for r in strict] == ["ThresholdConfidenceNotMet"] * 4  # 0.99999 applied

    override = config.replace(workflow=dataclasses.replace(config.workflow,
                                                           use_model_threshold=False))
    assert with_model_threshold(override).workflow.confidence_threshold == 0.0
    assert [r.status for r in run_workflow(override, images, progress=False)] == \
        ["SUCCEEDED"] * 4


def test_real_photos_go_through_the_local_engine_by_reference(tmp_path, sample_data_dir,
                                                              small_model_tar):
    """A phone-sized JPEG and a 1024x768 PNG (over the state's size limit, so they travel by
    reference) are classified through the same state machine, Lambdas and endpoint; an image
    over SageMaker's 6 MB payload is a named error, not a crash."""
    from photos import png_padded_to, real_image_path, upscaled_photo

    from workflow.run import ImageSource, run_workflow

    config = load_config("local", {"local.workspace": str(tmp_path / "ws"),
                                   "workflow.confidence_threshold": 0.0})
    deploy_locally(config, small_model_tar)
    folder = tmp_path / "photos"
    folder.mkdir()
    jpeg = upscaled_photo(real_image_path(sample_data_dir, "bicycle"), (4000, 3000), "JPEG",
                          folder)
    png = upscaled_photo(real_image_path(sample_data_dir, "motorcycle"), (1024, 768), "PNG",
                         folder)
    huge = folder / "huge.png"
    huge.write_bytes(png_padded_to(png.read_bytes(), 6 * 1024 * 1024 + 1))
    results = {Path(r.image).name: r for r in run_workflow(
        config, [ImageSource(label=str(p), path=p) for p in (jpeg, png, huge)],
        progress=False)}
    for photo in (jpeg, png):
        result = results[photo.name]
        assert result.status == "SUCCEEDED", (result.error, result.cause)
        assert result.predicted_label in config.classes and len(result.inferences) == 2
    assert results["huge.png"].error == "ImageTooLarge"
    assert "6" in results["huge.png"].cause  # names the limit


def test_noise_is_refused_by_name_as_not_a_vehicle_and_real_photos_are_not(
        tmp_path, sample_data_dir, small_model_tar):
    """The endpoint answers with the picture's out-of-distribution score and its version's
    threshold (train.py chose it on validation); the filter refuses what passes it with its
    own error, NotAVehicle, not ThresholdConfidenceNotMet - even at confidence threshold 0."""
    import io

    import numpy as np
    from PIL import Image

    from workflow.run import ImageSource, run_workflow

    config = load_config("local", {"local.workspace": str(tmp_path / "ws"),
                                   "workflow.confidence_threshold": 0.0,
                                   "workflow.use_model_threshold": False})
    deploy_locally(config, small_model_tar)
    folder = tmp_path / "noise"
    folder.mkdir()
    rng = np.random.default_rng(11)
    noise = []
    for i in range(4):
        path = folder / f"noise-{i}.png"
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
        path.write_bytes(buffer.getvalue())
        noise.append(path)
    real = real_images(sample_data_dir, 2)
    results = run_workflow(config, [ImageSource(label=str(p), path=p) for p in noise + real],
                           progress=False)
    assert [r.error for r in results[:4]] == ["NotAVehicle"] * 4, [r.cause for r in results]
    assert all("is not a bicycle or a motorcycle" in r.cause for r in results[:4])
    assert [r.status for r in results[4:]] == ["SUCCEEDED"] * 4, [r.cause for r in results[4:]]


def test_every_path_applies_the_same_registered_threshold(tmp_path, sample_data_dir,
                                                          small_model_tar):
    """One image, a folder, a prefix (bulk), the staging endpoint and a named
    --model-version: on the same images, the same verdicts, all by the threshold registered
    with the version that answers (not workflow.confidence_threshold)."""
    from workflow.bulk import run_bulk
    from workflow.run import run_workflow
    from workflow.stages import deploy_model_package, with_model_threshold

    images = real_images(sample_data_dir, 4)
    folder = tmp_path / "images"
    folder.mkdir()
    for path in images:
        (folder / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    config = load_config("local", {"local.workspace": str(tmp_path / "ws")})
    override = config.replace(workflow=dataclasses.replace(
        config.workflow, confidence_threshold=0.0, use_model_threshold=False))
    deploy_locally(override, small_model_tar)
    probe = run_workflow(override, images_from_options(override, images=str(folder)),
                         progress=False)
    confidence = {Path(r.image).name: r.confidence for r in probe}
    ranked = sorted(confidence.values())
    # a registered threshold that splits these images, and a configured one that would not
    registered = round((ranked[3] + ranked[4]) / 2, 6)
    configured = round(ranked[0] / 2, 6)
    expected = {name: ("met" if c >= registered else "below threshold")
                for name, c in confidence.items()}
    assert set(expected.values()) == {"met", "below threshold"}

    config = config.replace(workflow=dataclasses.replace(config.workflow,
                                                         confidence_threshold=configured))
    EndpointStateFile.of(config).path.unlink()
    register_model(config, small_model_tar, ModelApprovalStatus="Approved",
                   CustomerMetadataProperties={"ConfidenceThreshold": str(registered)})
    register_model(config, small_model_tar, ModelApprovalStatus="Approved",
                   CustomerMetadataProperties={"ConfidenceThreshold": "0.2"})
    deploy_model_package(config, 1, stage="prod")
    deploy_model_package(config, 1, stage="staging")
    store = LocalObjectStore(config.local.workspace / "s3")
    for path in sorted(folder.iterdir()):
        store.write_bytes(f"s3://incoming/same/{path.name}", path.read_bytes())

    def verdicts(results) -> dict[str, str]:
        return {Path(r.image).name: r.verdict for r in results}

    staging = config.replace(workflow=dataclasses.replace(
        config.workflow, endpoint_name=config.stage_endpoint_name("staging")))
    one = {}
    for path in sorted(folder.iterdir())[:2]:
        one.update(verdicts(run_workflow(config, images_from_options(config, image=str(path)),
                                         progress=False)))
    paths = {
        "image": one,
        "folder": verdicts(run_workflow(config, images_from_options(config, images=str(folder)),
                                        progress=False)),
        "prefix": verdicts(run_bulk(config, "s3://incoming/same/", progress=False).results),
        "staging": verdicts(run_workflow(staging, images_from_options(staging,
                                                                      images=str(folder)),
                                         progress=False)),
        "model_version": verdicts(run_workflow(config, images_from_options(
            config, images=str(folder)), model_version=1, progress=False)),
    }
    for name, found in paths.items():
        assert found == {k: expected[k] for k in found}, name
    # a named version's own threshold, not the deployed one's
    assert with_model_threshold(config, model_version=2).workflow.confidence_threshold == 0.2
    assert with_model_threshold(config).workflow.confidence_threshold == registered
