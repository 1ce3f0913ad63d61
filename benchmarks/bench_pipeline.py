"""How long `scones pipeline run` takes per step on the shared data, what the local
runner adds on top of running the three job scripts by hand, and what step caching saves.

    .venv/bin/python benchmarks/bench_pipeline.py [--epochs N] [--per-class N]

Runs (1) `scones pipeline run --json` in a fresh temporary workspace (definition build
included), (2) the same command again with nothing changed (Preprocess and Train are cache
hits: CacheConfig, pipeline.cache_steps) and (3) preprocess.py -> train.py -> evaluate.py
directly with the same settings, then prints one table. Run it by hand on a quiet machine:
it is not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
JOBS = REPO_ROOT / "pipelines" / "jobs"
sys.path.insert(0, str(REPO_ROOT))

from scones.console import format_table  # noqa: E402
from scones.config import load_config  # noqa: E402


def timed(command: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):
        sys.exit(f"{' '.join(command[:4])} ... failed ({result.returncode}):\n{result.stderr}")
    return seconds, result


def subset(source: Path, destination: Path, classes, per_class: int) -> Path:
    for name in classes:
        (destination / name).mkdir(parents=True)
        for path in sorted((source / name).iterdir())[:per_class]:
            shutil.copyfile(path, destination / name / path.name)
    return destination


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="training epochs (default: the config's)")
    parser.add_argument("--per-class", type=int,
                        help="use only the first N images of each class (default: all)")
    args = parser.parse_args()
    config = load_config("local")
    epochs = args.epochs or config.training.epochs
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        data = Path(config.data.input_url)
        if args.per_class:
            data = subset(data, tmp / "images", config.classes, args.per_class)
        settings = ["--set", f"local.workspace={tmp / 'ws'}", "--set", f"data.input_url={data}",
                    "--set", f"training.epochs={epochs}"]
        command = [sys.executable, "-m", "app.cli.main", "pipeline", "run", "--json",
                   "--param", "AccuracyThreshold=0", *settings]
        total, run = timed(command, cwd=REPO_ROOT, env=env)
        result = json.loads(run.stdout)
        if result["Status"] != "Succeeded":
            sys.exit(f"the pipeline run failed: {result['FailureReason']}")
        runner = {s["Name"]: s["Seconds"] for s in result["Steps"]}
        again_total, again_run = timed(command, cwd=REPO_ROOT, env=env)
        again = json.loads(again_run.stdout)
        if again["Status"] != "Succeeded":
            sys.exit(f"the second pipeline run failed: {again['FailureReason']}")
        cached = {s["Name"]: (s["Seconds"], s.get("CacheHitResult") is not None)
                  for s in again["Steps"]}

        direct_dir = tmp / "direct"
        t = config.training
        direct = {}
        direct["Preprocess"], _ = timed([
            sys.executable, str(JOBS / "preprocess.py"), "--input-dir", str(data),
            "--output-dir", str(direct_dir), "--classes", ",".join(config.classes),
            "--validation-fraction", str(config.data.validation_fraction),
            "--test-fraction", str(config.data.test_fraction),
            "--max-corrupt-fraction", str(config.data.max_corrupt_fraction),
            "--seed", str(config.data.seed)], env=env)
        model_dir, output_dir = direct_dir / "model", direct_dir / "output"
        direct["Train"], _ = timed([
            sys.executable, str(JOBS / "train.py"), "--epochs", str(epochs),
            "--learning-rate", str(t.learning_rate), "--batch-size", str(t.batch_size),
            "--width", str(t.width), "--seed", str(t.seed),
            "--train", str(direct_dir / "train"), "--validation", str(direct_dir / "validation"),
            "--model-dir", str(model_dir), "--output-data-dir", str(output_dir)], env=env)
        packed = direct_dir / "packed"
        packed.mkdir()
        with tarfile.open(packed / "model.tar.gz", "w:gz") as tar:
            for path in sorted(model_dir.iterdir()):
                tar.add(path, arcname=path.name)
        direct["Evaluate"], _ = timed([
            sys.executable, str(JOBS / "evaluate.py"), "--model-dir", str(packed),
            "--test-dir", str(direct_dir / "test"), "--output-dir", str(direct_dir / "eval")],
            env=env)

    rows = []
    for name, seconds in runner.items():
        plain = direct.get(name)
        second, hit = cached.get(name, (None, False))
        rows.append((name, f"{seconds:.2f}",
                     f"{second:.2f}{' (hit)' if hit else ''}" if second is not None else "-",
                     f"{plain:.2f}" if plain is not None else "-",
                     f"{seconds - plain:+.2f}" if plain is not None else "-"))
    steps_total = sum(runner.values())
    rows.append(("(all steps)", f"{steps_total:.2f}",
                 f"{sum(seconds for seconds, _ in cached.values()):.2f}",
                 f"{sum(direct.values()):.2f}", f"{steps_total - sum(direct.values()):+.2f}"))
    rows.append(("(scones pipeline run, wall)", f"{total:.2f}", f"{again_total:.2f}", "-",
                 f"{total - sum(direct.values()):+.2f}"))
    images = f"{args.per_class} per class" if args.per_class else "all images"
    print(f"scones pipeline run on {data} ({images}), {epochs} epochs, "
          f"{os.cpu_count()} CPUs; seconds")
    print(format_table(["STEP", "RUNNER", "RUNNER AGAIN (CACHE)", "DIRECT", "OVERHEAD"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
