"""`scones demo` end to end as a user runs it: a subprocess on the real sample data, with a
short training so the suite stays fast. Each stage's output must be there, and the run must
leave a registered+approved version, a deployment and a monitoring report behind."""
import json
import os
import subprocess
import sys
from pathlib import Path



def scones(*args, workspace, timeout=600):
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "scones.cli.main", *args, "--set", f"local.workspace={workspace}"],
        capture_output=True, text=True, timeout=timeout, env=env)


def test_demo_runs_the_whole_story_twice_keeping_earlier_results(tmp_path, sample_data_dir):
    workspace = tmp_path / "ws"
    quick = ["--set", "training.epochs=3", "--set", "pipeline.accuracy_threshold=0.5",
             "--images", "8"]
    first = scones("demo", *quick, workspace=workspace)
    assert first.returncode == 0, first.stderr[-3000:]
    for stage in ("[1/4] Model build", "[2/4] Approval", "[3/4] Inference workflow",
                  "[4/4] Monitoring"):
        assert stage in first.stderr
    assert "Traceback" not in first.stderr
    report = Path(first.stdout.strip().splitlines()[-1].removeprefix("Monitoring report: "))
    assert report.is_file() and report.suffix == ".md"
    assert "images correct" in first.stdout
    plots = dict(line.strip().rsplit(": ", 1) for line in first.stdout.splitlines()
                 if line.startswith("  ") and line.strip().endswith(".png"))
    assert {"training curves", "confusion matrix"} <= set(plots), first.stdout
    for path in plots.values():
        assert Path(path).read_bytes().startswith(b"\x89PNG"), path

    second = scones("demo", *quick, workspace=workspace)
    assert second.returncode == 0, second.stderr[-3000:]
    report2 = Path(second.stdout.strip().splitlines()[-1].removeprefix("Monitoring report: "))
    assert report2 != report and report.is_file() and report2.is_file()

    listed = scones("registry", "list", "--json", workspace=workspace)
    versions = json.loads(listed.stdout)
    assert sorted(v["ModelPackageVersion"] for v in versions) == [1, 2]
    assert {v["ModelApprovalStatus"] for v in versions} == {"Approved"}
    status = json.loads(scones("endpoint", "status", "--stage", "prod", "--json",
                               workspace=workspace).stdout)
    assert status["ModelPackageVersion"] == 2
