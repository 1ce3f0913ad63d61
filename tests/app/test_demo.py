"""`scones demo` end to end as a user runs it: a subprocess on the real sample data, with a
short training so the suite stays fast. Each stage's output must be there, and the run must
leave a registered+approved version, a deployment and a monitoring report behind."""
import json
from pathlib import Path

import pytest

from helpers import scones

# Each test takes tens of seconds: the demo: a whole pipeline, deployments and workflows, twice.
pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_story_twice_keeping_earlier_results(tmp_path, sample_data_dir):
    workspace = tmp_path / "ws"
    quick = ["--set", "training.epochs=3", "--set", "pipeline.accuracy_threshold=0.5",
             "--set", "deployment.staging.test_min_accuracy=0.5",  # a 3-epoch model
             "--set", "monitoring.min_records=8",  # the drift check on the 8-image batch
             "--images", "8"]
    first = scones("demo", *quick, workspace=workspace)
    assert first.returncode == 0, first.stderr[-3000:]
    for stage in ("[1/7] Model build", "[2/7] Approval", "[3/7] Staging test",
                  "[4/7] Promotion", "[5/7] Inference workflow", "[6/7] Monitoring",
                  "[7/7] Monitoring loop"):
        assert stage in first.stderr
    # the closed loop: the demo's own traffic is like the training data, the darkened batch
    # is not, and the alarm starts one retraining run
    loop = next(line for line in first.stdout.splitlines() if line.startswith("Monitoring loop"))
    assert loop.startswith("Monitoring loop: 0 violation(s) on the demo's traffic"), loop
    assert "retraining execution" in loop and " 0 on the darkened batch" not in loop, loop
    assert "Traceback" not in first.stderr
    lines = first.stdout.strip().splitlines()
    report = Path(next(line for line in lines if line.startswith("Monitoring report: "))
                  .removeprefix("Monitoring report: "))
    # it ends with the command that shows all of it in the browser
    assert lines[-1].endswith(f"scones ui --set local.workspace={workspace.resolve()}"), lines[-1]
    assert report.is_file() and report.suffix == ".md"
    assert "images correct" in first.stdout
    plots = dict(line.strip().rsplit(": ", 1) for line in first.stdout.splitlines()
                 if line.startswith("  ") and line.strip().endswith(".png"))
    assert {"training curves", "confusion matrix"} <= set(plots), first.stdout
    for path in plots.values():
        assert Path(path).read_bytes().startswith(b"\x89PNG"), path

    second = scones("demo", *quick, workspace=workspace)
    assert second.returncode == 0, second.stderr[-3000:]
    report2 = Path(next(line for line in second.stdout.splitlines()
                        if line.startswith("Monitoring report: "))
                   .removeprefix("Monitoring report: "))
    assert report2 != report and report.is_file() and report2.is_file()

    # the second drift is within the cool-down: no second retraining run
    assert "cool-down until" in second.stdout

    listed = scones("registry", "list", "--json", workspace=workspace)
    versions = {v["ModelPackageVersion"]: v["ModelApprovalStatus"]
                for v in json.loads(listed.stdout)}
    # demo 1: v1 approved and promoted, v2 from the retraining run waits for review;
    # demo 2: v3 approved and promoted
    assert versions == {1: "Approved", 2: "PendingManualApproval", 3: "Approved"}
    status = json.loads(scones("endpoint", "status", "--stage", "prod", "--json",
                               workspace=workspace).stdout)
    assert status["ModelPackageVersion"] == 3
