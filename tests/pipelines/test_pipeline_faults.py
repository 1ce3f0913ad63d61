"""Faults in real local runs, as a user meets them: `scones pipeline run` stopped by SIGTERM,
killed by SIGKILL in each step in turn, then `scones pipeline retry`; step caching across
two unchanged runs; parameters and input folders refused before anything runs.

A step is caught *in* its job with a pause hook: a sitecustomize.py on PYTHONPATH that, in
the job script named by SCONES_TEST_PAUSE_SCRIPT only, prints "paused <pid>" (the marker the
test waits for in the step's log.txt) and sleeps. The job is the real script, held at its
start; the runner and everything around it are real.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import copy_image_subset
from helpers import scones as run_scones

# Each test takes tens of seconds: whole pipeline runs, killed and retried.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
PAUSE_HOOK = """
    import os, sys, time
    script = os.environ.get("SCONES_TEST_PAUSE_SCRIPT")
    if script and sys.argv and sys.argv[0].endswith(script):
        print(f"paused {os.getpid()}", flush=True)
        time.sleep(600)
"""


def settings(workspace: Path, data: Path, cache: bool) -> list[str]:
    return ["--set", f"local.workspace={workspace}", "--set", "training.epochs=2",
            "--set", "training.batch_size=16", "--set", f"data.input_url={data}",
            "--set", f"pipeline.cache_steps={'true' if cache else 'false'}"]


def env(hook_dir: Path | None = None, pause: str | None = None) -> dict:
    environment = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    if pause:
        environment["PYTHONPATH"] = str(hook_dir)
        environment["SCONES_TEST_PAUSE_SCRIPT"] = pause
    return environment


def scones(*args: str) -> subprocess.CompletedProcess:
    return run_scones(*args, clean_env=env())


def alive(pid: int) -> bool:
    """Whether pid still runs (a zombie nobody reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, sample_data_dir):
    """Tiny real data (40 images per class), one workspace, the pause hook."""
    root = tmp_path_factory.mktemp("faults")
    hook_dir = root / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(textwrap.dedent(PAUSE_HOOK))
    data = copy_image_subset(sample_data_dir, root / "images", per_class=40)
    return {"root": root, "hook": hook_dir, "data": data, "workspace": root / "ws"}


STEP_OF_SCRIPT = {"preprocess.py": "Preprocess", "train.py": "Train", "evaluate.py": "Evaluate"}


def start_paused_run(lab, script: str, *params: str):
    """`scones pipeline run` (no caching) in the background, held in `script`'s job; returns
    the runner, the step's log and the paused job's pid."""
    executions = lab["workspace"] / "executions"
    before = set(executions.iterdir()) if executions.exists() else set()
    runner = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "pipeline", "run", "--json",
         "--param", "AccuracyThreshold=0", *params,
         *settings(lab["workspace"], lab["data"], cache=False)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env(lab["hook"], script))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        new = set(executions.iterdir()) - before if executions.exists() else set()
        for folder in new:
            log = folder / STEP_OF_SCRIPT[script] / "log.txt"
            text = log.read_text(errors="replace") if log.exists() else ""
            if "paused " in text:
                return runner, log, int(text.split("paused ")[1].split()[0])
        if runner.poll() is not None:
            raise AssertionError(f"the run ended before pausing in {script}: "
                                 f"{runner.stderr.read()[-3000:]}")
        time.sleep(0.2)
    runner.kill()
    raise AssertionError(f"no pause marker from {script} within 180 s")


def registry_versions(lab) -> list[int]:
    listed = scones("registry", "list", "--json", *settings(lab["workspace"], lab["data"], False))
    assert listed.returncode == 0, listed.stderr
    return sorted(p["ModelPackageVersion"] for p in json.loads(listed.stdout))


def executions(lab) -> list[dict]:
    listed = scones("pipeline", "executions", "--json",
                    *settings(lab["workspace"], lab["data"], False))
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


# --- SIGTERM --------------------------------------------------------------------------------

def test_sigterm_stops_the_run_and_its_job_and_records_it_stopped(lab):
    runner, log, job_pid = start_paused_run(lab, "train.py")
    assert alive(job_pid)
    runner.send_signal(signal.SIGTERM)
    _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stderr and "scones pipeline retry" in stderr
    assert "Traceback" not in stderr
    assert not alive(job_pid)  # the training job did not outlive the runner
    execution_id = log.parent.parent.name
    stopped = next(e for e in executions(lab) if e["ExecutionId"] == execution_id)
    assert stopped["Status"] == "Stopped"
    assert "SIGTERM" in stopped["FailureReason"]
    assert {s["Name"]: s["Status"] for s in stopped["Steps"]} == {
        "Preprocess": "Succeeded", "Train": "Stopped"}
    # the step's input copies went with it
    assert not list((log.parent / "input").rglob("*.npz"))


# --- SIGKILL in each step, then retry --------------------------------------------------------

@pytest.mark.parametrize("script, step, done_before", [
    ("preprocess.py", "Preprocess", []),
    ("train.py", "Train", ["Preprocess"]),
    ("evaluate.py", "Evaluate", ["Preprocess", "Train"]),
])
def test_sigkill_in_a_step_ends_failed_and_retry_completes_it(lab, script, step, done_before):
    versions_before = registry_versions(lab)
    runner, log, job_pid = start_paused_run(lab, script)
    runner.kill()  # SIGKILL: the runner records nothing more
    runner.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while alive(job_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(job_pid), "the step's job outlived a SIGKILLed runner"
    execution_id = log.parent.parent.name

    # the next command that reads the executions finds the dead run
    dead = next(e for e in executions(lab) if e["ExecutionId"] == execution_id)
    assert dead["Status"] == "Failed"
    assert f"runner process {runner.pid} ended without finishing (killed?) at step {step}" \
        in dead["FailureReason"]
    statuses = {s["Name"]: s["Status"] for s in dead["Steps"]}
    assert statuses == {**{name: "Succeeded" for name in done_before}, step: "Failed"}
    assert registry_versions(lab) == versions_before  # nothing half-registered
    assert not [p for p in log.parent.rglob("*") if p.suffix in (".png", ".npz", ".gz")]

    retried = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "pipeline", "retry", execution_id, "--json",
         *settings(lab["workspace"], lab["data"], False)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env())
    assert retried.returncode == 0, retried.stderr[-3000:]
    result = json.loads(retried.stdout)
    assert result["ExecutionId"] == execution_id and result["Status"] == "Succeeded"
    assert [s["Name"] for s in result["Steps"]] == [
        "Preprocess", "Train", "Evaluate", "Baseline", "CheckAccuracy",
        "Register-RegisterModel"]
    # the steps that had succeeded were reused, not run again
    for name in done_before:
        assert f"▶ {name} " not in retried.stderr
    assert f"▶ {step} " in retried.stderr
    assert registry_versions(lab) == versions_before + [result["ModelPackageVersion"]]

    again = scones("pipeline", "retry", execution_id,
                   *settings(lab["workspace"], lab["data"], False))
    assert again.returncode == 2
    assert again.stderr.strip() == (f"error: execution {execution_id} is Succeeded: only a "
                                    "Failed or Stopped execution can be retried (start a new "
                                    "one: scones pipeline run)")


# --- caching ---------------------------------------------------------------------------------

def test_second_unchanged_run_reuses_preprocess_and_train_and_a_new_epochs_misses(lab):
    common = settings(lab["workspace"], lab["data"], True)
    first = scones("pipeline", "run", "--json", "--param", "AccuracyThreshold=0", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    second = scones("pipeline", "run", "--json", "--param", "AccuracyThreshold=0", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert all(s["CacheHitResult"] is None for s in one["Steps"])
    hits = {s["Name"]: s["CacheHitResult"] for s in two["Steps"]}
    assert hits["Preprocess"] == {"SourcePipelineExecutionArn": one["ExecutionArn"]}
    assert hits["Train"] == {"SourcePipelineExecutionArn": one["ExecutionArn"]}
    assert hits["Evaluate"] is None  # no CacheConfig: it runs, and a new version is registered
    assert two["Status"] == "Succeeded"
    assert two["ModelPackageVersion"] == one["ModelPackageVersion"] + 1
    assert "Train | epoch" not in second.stderr
    listed = scones("pipeline", "executions", *common)
    assert "Train:ok(cached)" in listed.stdout

    third = scones("pipeline", "run", "--json", "--param", "AccuracyThreshold=0",
                   "--param", "Epochs=1", *common)
    assert third.returncode == 0, third.stderr[-3000:]
    hits = {s["Name"]: s["CacheHitResult"] for s in json.loads(third.stdout)["Steps"]}
    assert hits["Preprocess"] is not None and hits["Train"] is None
    assert "Train | epoch 1/1" in third.stderr


# --- refused before anything runs --------------------------------------------------------------

@pytest.mark.parametrize("param, message", [
    ("AccuracyThreshold=-5", "--param AccuracyThreshold: pipeline.accuracy_threshold must be "
                             "between 0 and 1, got -5.0"),
    ("AccuracyThreshold=2", "--param AccuracyThreshold: pipeline.accuracy_threshold must be "
                            "between 0 and 1, got 2.0"),
    ("Epochs=0", "--param Epochs: training.epochs must be at least 1"),
    ("Epochs=2.5", "--param Epochs=2.5: not a valid integer"),
    ("LearningRate=0", "--param LearningRate: training.learning_rate must be positive"),
    ("ModelApprovalStatus=Maybe", "--param ModelApprovalStatus: pipeline.model_approval_status "
                                  "must be PendingManualApproval, Approved or Rejected"),
])
def test_out_of_range_parameters_are_refused_before_anything_runs(tmp_path, param, message):
    workspace = tmp_path / "ws"
    result = scones("pipeline", "run", "--param", param, "--set", f"local.workspace={workspace}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {message}"
    assert not (workspace / "executions").exists()


def test_an_input_folder_holding_the_workspace_is_refused_before_copying(tmp_path):
    data = tmp_path / "project"
    (data / "bicycle").mkdir(parents=True)
    workspace = data / ".scones"
    result = scones("pipeline", "run", "--set", f"local.workspace={workspace}",
                    "--set", f"data.input_url={data}")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: the input folder (InputDataUrl) {data} contains "
                                    f"the workspace {workspace}")
    assert not (workspace / "executions").exists()
