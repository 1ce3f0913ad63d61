"""The local runner: expressions, ordering and branches on small hand-written definitions,
then the real pipeline definition end to end (the Fail branch; the register branch runs in
tests/scones/test_cli_pipeline.py through the CLI)."""
from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import textwrap

import pytest

from scones.backend import backend_for
from scones.config import load_config
from scones.errors import PipelineExecutionError
from scones.local.pipeline_runner.executions import ExecutionStore
from scones.workspace import Workspace


def list_executions(config):
    return ExecutionStore(Workspace(config.local.workspace)).list()
from scones.local.pipeline_runner.expressions import Context, evaluate_condition, resolve, walk_path
from scones.local.pipeline_runner import plan, resolve_parameters, run_pipeline_locally
from scones.storage import LocalObjectStore

BUCKET = "scones-local"


@pytest.fixture
def config(tmp_path):
    return load_config("local", overrides={"local.workspace": str(tmp_path / "ws")})


@pytest.fixture
def store(config):
    return LocalObjectStore(config.local.workspace / "s3")


def put_script(store, name: str, source: str) -> str:
    url = f"s3://{BUCKET}/code/{name}"
    store.write_bytes(url, textwrap.dedent(source).encode())
    return url


def processing_step(name, script_url, script_name, inputs=(), outputs=(), arguments=(),
                    property_files=None, depends_on=None) -> dict:
    """A Processing step as ScriptProcessor(command=["python3"]) writes it."""
    step = {
        "Name": name, "Type": "Processing",
        "Arguments": {
            "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.large",
                                                      "InstanceCount": 1, "VolumeSizeInGB": 30}},
            "AppSpecification": {
                "ImageUri": "763104351884.dkr.ecr.us-east-1.amazonaws.com/x:1",
                "ContainerEntrypoint": ["python3", f"/opt/ml/processing/input/code/{script_name}"],
                "ContainerArguments": list(arguments),
            },
            "RoleArn": "arn:aws:iam::123456789012:role/x",
            "ProcessingInputs": [
                *({"InputName": f"input-{i}", "AppManaged": False,
                   "S3Input": {"S3Uri": uri, "LocalPath": path, "S3DataType": "S3Prefix",
                               "S3InputMode": "File"}} for i, (uri, path) in enumerate(inputs)),
                {"InputName": "code", "AppManaged": False,
                 "S3Input": {"S3Uri": script_url, "LocalPath": "/opt/ml/processing/input/code",
                             "S3DataType": "S3Prefix", "S3InputMode": "File"}},
            ],
            "ProcessingOutputConfig": {"Outputs": [
                {"OutputName": out_name, "AppManaged": False,
                 "S3Output": {"S3Uri": uri, "LocalPath": path, "S3UploadMode": "EndOfJob"}}
                for out_name, uri, path in outputs]},
        },
    }
    if property_files:
        step["PropertyFiles"] = property_files
    if depends_on:
        step["DependsOn"] = depends_on
    return step


def output_uri(step: str, output: str) -> dict:
    """The SDK's default output URL: s3://bucket/<pipeline>/<execution id>/<step>/output/x."""
    return {"Std:Join": {"On": "/", "Values": [
        "s3:/", BUCKET, "test", {"Get": "Execution.PipelineExecutionId"}, step, "output",
        output]}}


SCORE_SCRIPT = """
    import json, os, sys
    out = sys.argv[sys.argv.index("--out") + 1]
    score = float(sys.argv[sys.argv.index("--score") + 1])
    os.makedirs(out, exist_ok=True)
    json.dump({"metrics": {"score": {"value": score}}, "where": out},
              open(os.path.join(out, "report.json"), "w"))
    print("scored", score)
"""

READ_SCRIPT = """
    import json, os, sys
    src = sys.argv[1]
    report = json.load(open(os.path.join(src, "report.json")))
    os.makedirs(sys.argv[2], exist_ok=True)
    open(os.path.join(sys.argv[2], "summary.txt"), "w").write(str(report["metrics"]))
"""


def branching_definition(store) -> dict:
    """Score -> Check (score >= Threshold) -> Summarize (reads Score's output) | Fail."""
    score_url = put_script(store, "score.py", SCORE_SCRIPT)
    read_url = put_script(store, "read.py", READ_SCRIPT)
    score_value = {"Std:JsonGet": {
        "PropertyFile": {"Get": "Steps.Score.PropertyFiles.Report"},
        "Path": "metrics.score.value"}}
    return {
        "Version": "2020-12-01",
        "Parameters": [{"Name": "Threshold", "Type": "Float", "DefaultValue": 0.5},
                       {"Name": "Score", "Type": "Float", "DefaultValue": 0.75}],
        "Steps": [
            processing_step(
                "Score", score_url, "score.py",
                outputs=[("report", output_uri("Score", "report"), "/opt/ml/processing/report")],
                arguments=["--out", "/opt/ml/processing/report",
                           "--score", {"Std:Join": {"On": "", "Values": [
                               {"Get": "Parameters.Score"}]}}],
                property_files=[{"PropertyFileName": "Report", "OutputName": "report",
                                 "FilePath": "report.json"}]),
            {"Name": "Check", "Type": "Condition", "Arguments": {
                "Conditions": [{"Type": "GreaterThanOrEqualTo", "LeftValue": score_value,
                                "RightValue": {"Get": "Parameters.Threshold"}}],
                "IfSteps": [processing_step(
                    "Summarize", read_url, "read.py",
                    inputs=[({"Get": "Steps.Score.ProcessingOutputConfig.Outputs['report']"
                                     ".S3Output.S3Uri"}, "/opt/ml/processing/in")],
                    outputs=[("summary", f"s3://{BUCKET}/summaries",
                              "/opt/ml/processing/summary")],
                    arguments=["/opt/ml/processing/in", "/opt/ml/processing/summary"])],
                "ElseSteps": [{"Name": "TooLow", "Type": "Fail", "Arguments": {
                    "ErrorMessage": {"Std:Join": {"On": " ", "Values": [
                        "score", score_value, "is below", {"Get": "Parameters.Threshold"}]}}}}],
            }},
        ],
    }


# --- expressions ----------------------------------------------------------------------------

def test_expressions_resolve_parameters_properties_joins_and_json():
    ctx = Context(
        parameters={"Epochs": 3, "Rate": 0.5},
        execution={"PipelineExecutionId": "abc123"},
        steps={"Pre": {"ProcessingOutputConfig": {"Outputs": [
            {"OutputName": "train", "S3Output": {"S3Uri": "s3://b/train"}},
            {"OutputName": "test", "S3Output": {"S3Uri": "s3://b/test"}}]}}},
        property_files={"Eval": {"R": {"m": {"acc": [0.1, {"value": 0.9}]}}}},
    )
    value = resolve({
        "a": {"Get": "Steps.Pre.ProcessingOutputConfig.Outputs['test'].S3Output.S3Uri"},
        "b": {"Std:Join": {"On": "/", "Values": ["x", {"Get": "Parameters.Epochs"},
                                                 {"Get": "Execution.PipelineExecutionId"}]}},
        "c": [{"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Eval.PropertyFiles.R"},
                               "Path": "m.acc[1].value"}}],
        "d": "plain",
    }, ctx)
    assert value == {"a": "s3://b/test", "b": "x/3/abc123", "c": [0.9], "d": "plain"}
    assert walk_path(ctx.steps["Pre"], "ProcessingOutputConfig.Outputs[0].OutputName",
                     "t") == "train"


@pytest.mark.parametrize("reference, message", [
    ({"Get": "Parameters.Nope"}, "Parameters.Nope.*known: Epochs"),
    ({"Get": "Steps.Missing.X"}, "Missing"),
    ({"Get": "Steps.Pre.NoSuchProperty"}, "NoSuchProperty"),
    ({"Get": "Execution.Nope"}, "Execution.Nope"),
    ({"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Pre.PropertyFiles.R"}, "Path": "x"}},
     "no property file"),
])
def test_unknown_references_are_named(reference, message):
    ctx = Context(parameters={"Epochs": 3}, execution={"PipelineExecutionId": "e"},
                  steps={"Pre": {"A": 1}})
    with pytest.raises(PipelineExecutionError, match=message):
        resolve(reference, ctx)


@pytest.mark.parametrize("condition, expected", [
    ({"Type": "GreaterThanOrEqualTo", "LeftValue": 0.8, "RightValue": 0.8}, True),
    ({"Type": "GreaterThan", "LeftValue": 0.8, "RightValue": 0.8}, False),
    ({"Type": "LessThan", "LeftValue": "0.5", "RightValue": 0.8}, True),
    ({"Type": "LessThanOrEqualTo", "LeftValue": 0.9, "RightValue": 0.8}, False),
    ({"Type": "Equals", "LeftValue": {"Get": "Parameters.Mode"}, "RightValue": "fast"}, True),
    ({"Type": "Not", "Expression": {"Type": "Equals", "LeftValue": 1, "RightValue": 1}}, False),
    ({"Type": "Or", "Conditions": [
        {"Type": "Equals", "LeftValue": 1, "RightValue": 2},
        {"Type": "GreaterThan", "LeftValue": 3, "RightValue": 2}]}, True),
    ({"Type": "In", "QueryValue": {"Get": "Parameters.Mode"}, "Values": ["slow", "fast"]}, True),
    ({"Type": "In", "QueryValue": 3, "Values": [1, 2]}, False),
])
def test_conditions(condition, expected):
    ctx = Context(parameters={"Mode": "fast"})
    assert evaluate_condition(condition, ctx) is expected


def test_unsupported_condition_type_is_named():
    with pytest.raises(PipelineExecutionError, match="Between"):
        evaluate_condition({"Type": "Between"}, Context())


def test_parameters_are_typed_and_unknown_names_list_the_known_ones():
    definition = {"Parameters": [{"Name": "Epochs", "Type": "Integer", "DefaultValue": 30},
                                 {"Name": "Rate", "Type": "Float", "DefaultValue": 0.1},
                                 {"Name": "Fast", "Type": "Boolean", "DefaultValue": False},
                                 {"Name": "Url", "Type": "String", "DefaultValue": "s3://b/x"}]}
    assert resolve_parameters(definition, {"Epochs": "5", "Rate": "0.25", "Fast": "true"}) == \
        {"Epochs": 5, "Rate": 0.25, "Fast": True, "Url": "s3://b/x"}
    with pytest.raises(PipelineExecutionError, match="Epocs.*known: Epochs, Rate, Fast, Url"):
        resolve_parameters(definition, {"Epocs": "5"})
    with pytest.raises(PipelineExecutionError, match="Epochs is Integer: '2.5'"):
        resolve_parameters(definition, {"Epochs": "2.5"})
    with pytest.raises(PipelineExecutionError, match="Fast is Boolean"):
        resolve_parameters(definition, {"Fast": "maybe"})


# --- plans and hand-written definitions -------------------------------------------------------

def test_unsupported_step_type_is_refused_before_anything_runs(config):
    definition = {"Steps": [{"Name": "Score", "Type": "Fail", "Arguments": {}},
                            {"Name": "Batch", "Type": "Transform", "Arguments": {}}]}
    with pytest.raises(PipelineExecutionError, match="'Batch'.*'Transform'"):
        run_pipeline_locally(definition, config, progress=False)
    assert list_executions(config) == []


def test_unknown_step_reference_is_refused():
    definition = {"Steps": [{"Name": "A", "Type": "Fail", "DependsOn": ["Ghost"],
                             "Arguments": {}}]}
    with pytest.raises(PipelineExecutionError, match="'A'.*Ghost"):
        plan(definition)


def test_if_branch_runs_with_data_from_the_first_step(config, store):
    result = run_pipeline_locally(branching_definition(store), config, progress=False)
    assert result.status == "Succeeded", result.failure_reason
    assert [(s.name, s.status) for s in result.steps] == [
        ("Score", "Succeeded"), ("Check", "Succeeded"), ("Summarize", "Succeeded")]
    summary = store.read_bytes(f"s3://{BUCKET}/summaries/summary.txt").decode()
    assert summary == "{'score': {'value': 0.75}}"
    # the /opt/ml path in the arguments landed in the execution's step folder
    report = json.loads(store.read_bytes(
        f"s3://{BUCKET}/test/{result.execution_id}/Score/output/report/report.json"))
    step_dir = config.local.workspace / "executions" / result.execution_id / "Score"
    assert report["where"] == str(step_dir / "processing" / "report")
    assert (step_dir / "log.txt").read_text().splitlines()[-1] == "scored 0.75"
    recorded = list_executions(config)
    assert recorded[0]["ExecutionId"] == result.execution_id
    assert recorded[0]["Status"] == "Succeeded"
    assert recorded[0]["Parameters"] == {"Threshold": 0.5, "Score": 0.75}
    assert [s["Name"] for s in recorded[0]["Steps"]] == ["Score", "Check", "Summarize"]


def test_else_branch_fails_with_the_resolved_message_and_skips_the_if_branch(config, store):
    result = run_pipeline_locally(branching_definition(store), config,
                                  parameters={"Score": "0.25"}, progress=False)
    assert result.status == "Failed"
    assert result.failure_reason == "score 0.25 is below 0.5"
    assert [(s.name, s.status) for s in result.steps] == [
        ("Score", "Succeeded"), ("Check", "Succeeded"), ("TooLow", "Failed")]
    assert not store.exists(f"s3://{BUCKET}/summaries/summary.txt")
    assert list_executions(config)[0]["FailureReason"] == "score 0.25 is below 0.5"


def test_steps_run_in_dependency_order_not_listing_order(config, store):
    write = put_script(store, "w.py", """
        import sys, os
        os.makedirs(sys.argv[1], exist_ok=True)
        open(os.path.join(sys.argv[1], "x.txt"), "w").write("hello")
    """)
    read = put_script(store, "r.py", """
        import sys, os
        print(open(os.path.join(sys.argv[1], "x.txt")).read().upper())
    """)
    last = processing_step("Last", read, "r.py", arguments=["/opt/ml/processing/in"],
                           inputs=[({"Get": "Steps.First.ProcessingOutputConfig.Outputs[0]"
                                            ".S3Output.S3Uri"}, "/opt/ml/processing/in")])
    first = processing_step("First", write, "w.py", arguments=["/opt/ml/processing/out"],
                            outputs=[("x", f"s3://{BUCKET}/x", "/opt/ml/processing/out")])
    middle = {"Name": "Gate", "Type": "Condition", "DependsOn": ["Last"],
              "Arguments": {"Conditions": [], "IfSteps": [], "ElseSteps": []}}
    result = run_pipeline_locally({"Steps": [middle, last, first]}, config, progress=False)
    assert [s.name for s in result.steps] == ["First", "Last", "Gate"]
    log = config.local.workspace / "executions" / result.execution_id / "Last" / "log.txt"
    assert "HELLO" in log.read_text()


def test_a_failing_subprocess_fails_the_step_with_its_log_tail(config, store):
    crash = put_script(store, "crash.py", """
        import sys
        print("loading data")
        sys.exit("error: the input folder has no images")
    """)
    definition = {"Steps": [processing_step("Crash", crash, "crash.py"),
                            {"Name": "After", "Type": "Fail", "DependsOn": ["Crash"],
                             "Arguments": {"ErrorMessage": "must not run"}}]}
    result = run_pipeline_locally(definition, config, progress=False)
    assert result.status == "Failed"
    assert [(s.name, s.status) for s in result.steps] == [("Crash", "Failed")]
    assert "exited with code 1" in result.failure_reason
    assert "error: the input folder has no images" in result.failure_reason
    assert "loading data" in result.failure_reason


def test_an_output_escaping_the_bucket_is_refused(config, store, tmp_path):
    write = put_script(store, "w.py", """
        import sys, os
        os.makedirs(sys.argv[1], exist_ok=True)
        open(os.path.join(sys.argv[1], "x.txt"), "w").write("hello")
    """)
    definition = {"Steps": [processing_step(
        "Leak", write, "w.py", arguments=["/opt/ml/processing/out"],
        outputs=[("x", f"s3://{BUCKET}/../../../outside", "/opt/ml/processing/out")])]}
    result = run_pipeline_locally(definition, config, progress=False)
    assert result.status == "Failed"
    assert "escapes its bucket" in result.failure_reason
    assert not (tmp_path / "outside").exists()
    assert not (config.local.workspace / "outside").exists()


def test_training_step_gets_sagemakers_environment_and_produces_model_tar(config, store):
    source = textwrap.dedent("""
        import argparse, json, os
        p = argparse.ArgumentParser()
        p.add_argument("--epochs", type=int)
        p.add_argument("--learning-rate", type=float)
        args = p.parse_args()
        rows = open(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "rows.txt")).read().split()
        with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as f:
            json.dump({"epochs": args.epochs, "lr": args.learning_rate, "rows": rows,
                       "hosts": json.loads(os.environ["SM_HOSTS"]),
                       "hps": json.loads(os.environ["SM_HPS"])}, f)
        os.makedirs(os.path.join(os.environ["SM_MODEL_DIR"], "code"))
        open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "history.json"), "w").write("[]")
        for epoch in range(1, args.epochs + 1):
            print(f"epoch {epoch}/{args.epochs} validation_accuracy={0.5 + epoch / 10:.4f}")
    """).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        info.size = len(source)
        tar.addfile(info, io.BytesIO(source))
    store.write_bytes(f"s3://{BUCKET}/code/sourcedir.tar.gz", buffer.getvalue())
    store.write_bytes(f"s3://{BUCKET}/data/train/rows.txt", b"a b c")
    definition = {
        "Parameters": [{"Name": "Epochs", "Type": "Integer", "DefaultValue": 2}],
        "Steps": [{"Name": "Train", "Type": "Training", "Arguments": {
            "AlgorithmSpecification": {"TrainingInputMode": "File", "MetricDefinitions": [
                {"Name": "validation:accuracy", "Regex": r"validation_accuracy=([0-9.]+)"}]},
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/models"},
            "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/train"}}}],
            "HyperParameters": {
                "epochs": {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.Epochs"}]}},
                "learning-rate": "0.003",
                "sagemaker_submit_directory": f'"s3://{BUCKET}/code/sourcedir.tar.gz"',
                "sagemaker_program": '"train.py"',
                "sagemaker_region": '"us-east-1"'}}}],
    }
    result = run_pipeline_locally(definition, config, parameters={"Epochs": 3}, progress=False)
    assert result.status == "Succeeded", result.failure_reason
    properties = result.properties["Train"]
    job = properties["TrainingJobName"]
    assert job == f"pipelines-{result.execution_id}-Train"
    model_url = f"s3://{BUCKET}/models/{job}/output/model.tar.gz"
    assert properties["ModelArtifacts"]["S3ModelArtifacts"] == model_url
    assert properties["FinalMetricDataList"][0]["MetricName"] == "validation:accuracy"
    assert properties["FinalMetricDataList"][0]["Value"] == pytest.approx(0.8)
    with tarfile.open(store.path_for(model_url)) as tar:
        assert sorted(tar.getnames()) == ["code", "model.json"]
        model = json.load(tar.extractfile("model.json"))
    assert model == {"epochs": 3, "lr": 0.003, "rows": ["a", "b", "c"], "hosts": ["algo-1"],
                     "hps": {"epochs": 3, "learning-rate": 0.003}}
    assert store.exists(f"s3://{BUCKET}/models/{job}/output/output.tar.gz")


# --- the real definition, end to end ---------------------------------------------------------

def test_real_pipeline_fails_at_the_fail_step_when_accuracy_is_below_threshold(
        tmp_path, small_image_folder):
    config = load_config("local", overrides={
        "local.workspace": str(tmp_path / "ws"), "training.epochs": 2,
        "training.batch_size": 16, "data.input_url": str(small_image_folder(per_class=40))})
    from pipelines.pipeline import pipeline_definition

    # above any accuracy, so the Else branch is certain whatever the model learned
    result = run_pipeline_locally(pipeline_definition(config), config,
                                  parameters={"AccuracyThreshold": "1.01"}, progress=False)
    assert result.status == "Failed"
    assert [(s.type, s.status) for s in result.steps] == [
        ("Processing", "Succeeded"), ("Training", "Succeeded"), ("Processing", "Succeeded"),
        ("Processing", "Succeeded"), ("Condition", "Succeeded"), ("Fail", "Failed")]
    evaluation = json.loads(LocalObjectStore(config.local.workspace / "s3").read_bytes(
        result.properties["Evaluate"]["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]
        ["S3Uri"] + "/evaluation.json"))
    accuracy = evaluation["binary_classification_metrics"]["accuracy"]["value"]
    assert f"Model accuracy {accuracy} " in result.failure_reason
    assert "1.01" in result.failure_reason
    assert backend_for(config).registry().list_packages() == []  # nothing was registered
    train_log = config.local.workspace / "executions" / result.execution_id / "Train" / "log.txt"
    assert "epoch 2/2" in train_log.read_text()


# --- step caching (CacheConfig) ----------------------------------------------------------------

COUNT_SCRIPT = """
    import os, sys
    data, out = sys.argv[1], sys.argv[2]
    rows = open(os.path.join(data, "rows.txt")).read().split()
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "count.txt"), "w").write(f"{len(rows)} x {sys.argv[3]}")
    print("counted", len(rows))
"""


def cached_definition(store, enabled=True, expire="P30D") -> dict:
    """Count (cacheable Processing: reads data/rows.txt and its code) -> Report (not cached)."""
    script = put_script(store, "count.py", COUNT_SCRIPT)
    store.write_bytes(f"s3://{BUCKET}/data/rows.txt", b"a b c")
    count = processing_step(
        "Count", script, "count.py",
        inputs=[(f"s3://{BUCKET}/data", "/opt/ml/processing/data")],
        outputs=[("count", output_uri("Count", "count"), "/opt/ml/processing/count")],
        arguments=["/opt/ml/processing/data", "/opt/ml/processing/count",
                   {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.Factor"}]}}])
    count["CacheConfig"] = {"Enabled": enabled, "ExpireAfter": expire}
    report = {"Name": "Report", "Type": "Fail", "DependsOn": ["Count"], "Arguments": {
        "ErrorMessage": {"Std:Join": {"On": " ", "Values": [
            "count at", {"Get": "Steps.Count.ProcessingOutputConfig.Outputs['count']"
                                ".S3Output.S3Uri"}]}}}}
    return {"Parameters": [{"Name": "Factor", "Type": "String", "DefaultValue": "1"}],
            "Steps": [count, report]}


def count_hit(result) -> str | None:
    return next(s.cache_source_arn for s in result.steps if s.name == "Count")


def test_a_cacheable_step_reuses_an_earlier_run_until_what_it_reads_changes(config, store):
    definition = cached_definition(store)
    first = run_pipeline_locally(definition, config, progress=False)
    second = run_pipeline_locally(definition, config, progress=False)
    assert count_hit(first) is None
    assert count_hit(second) == first.execution_arn
    # the hit's properties are the first run's: a later step reads the first run's outputs
    assert second.failure_reason == (f"count at s3://{BUCKET}/test/{first.execution_id}/Count/"
                                     "output/count")
    recorded = {e["ExecutionId"]: e for e in list_executions(config)}
    step = recorded[second.execution_id]["Steps"][0]
    assert (step["Status"], step["CacheHitResult"], step["LogPath"]) == (
        "Succeeded", {"SourcePipelineExecutionArn": first.execution_arn}, None)
    assert not (config.local.workspace / "executions" / second.execution_id / "Count"
                / "log.txt").exists()  # nothing ran

    # a parameter in its arguments, its data, its code: each change misses
    changed_param = run_pipeline_locally(definition, config, {"Factor": "2"}, progress=False)
    assert count_hit(changed_param) is None
    store.write_bytes(f"s3://{BUCKET}/data/rows.txt", b"a b c d")
    changed_data = run_pipeline_locally(definition, config, progress=False)
    assert count_hit(changed_data) is None
    store.write_bytes(f"s3://{BUCKET}/code/count.py",
                      textwrap.dedent(COUNT_SCRIPT).encode() + b"# changed\n")
    changed_code = run_pipeline_locally(definition, config, progress=False)
    assert count_hit(changed_code) is None
    # ... and the newest run with the same inputs is the one reused
    assert count_hit(run_pipeline_locally(definition, config, progress=False)) == \
        changed_code.execution_arn


def test_cache_misses_when_disabled_expired_or_the_outputs_are_gone(config, store):
    run_pipeline_locally(cached_definition(store, enabled=False), config, progress=False)
    assert count_hit(run_pipeline_locally(cached_definition(store, enabled=False), config,
                                          progress=False)) is None
    expired = run_pipeline_locally(cached_definition(store, expire="PT0S"), config,
                                   progress=False)
    assert count_hit(expired) is None  # the disabled runs kept no key; PT0S reuses nothing
    cached = run_pipeline_locally(cached_definition(store), config, progress=False)
    assert count_hit(cached) == expired.execution_arn
    for url in store.list_urls(f"s3://{BUCKET}/test/"):
        store.path_for(url).unlink()
    assert count_hit(run_pipeline_locally(cached_definition(store), config,
                                          progress=False)) is None


def test_an_unreadable_expire_after_is_refused_before_anything_runs(config, store):
    with pytest.raises(PipelineExecutionError, match="ExpireAfter '30 days' is not an ISO 8601"):
        run_pipeline_locally(cached_definition(store, expire="30 days"), config, progress=False)
    assert list_executions(config) == []


# --- local inputs ------------------------------------------------------------------------------

LIST_SCRIPT = """
    import os, sys
    for folder, _, files in sorted(os.walk(sys.argv[1])):
        for name in sorted(files):
            print("got", os.path.relpath(os.path.join(folder, name), sys.argv[1]))
    sys.exit(int(sys.argv[2]))
"""


def listing_definition(store, source, exit_code=0) -> dict:
    script = put_script(store, "list.py", LIST_SCRIPT)
    return {"Steps": [processing_step("List", script, "list.py",
                                      inputs=[(str(source), "/opt/ml/processing/in")],
                                      arguments=["/opt/ml/processing/in", str(exit_code)])]}


def test_a_local_input_folder_gives_the_step_only_the_files_it_can_read(config, store, tmp_path):
    source = tmp_path / "photos"
    for relative in ("bicycle/a.png", "bicycle/b.JPG", "bicycle/notes.txt", "motorcycle/c.jpeg",
                     "motorcycle/deeper/d.png", "cifar-100-python/meta", "README.md",
                     ".git/objects/x.png"):
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(b"x")
    result = run_pipeline_locally(listing_definition(store, source), config, progress=False)
    assert result.status == "Succeeded", result.failure_reason
    log = (config.local.workspace / "executions" / result.execution_id / "List" / "log.txt")
    got = [line.split(" ", 1)[1] for line in log.read_text().splitlines()
           if line.startswith("got ")]
    assert got == ["bicycle/a.png", "bicycle/b.JPG", "cifar-100-python/meta",
                   "motorcycle/c.jpeg"]
    # the copy is gone once the step ended (the log and the outputs stay)
    assert not (log.parent / "processing" / "in").exists()


def test_a_failed_step_leaves_no_input_copy_behind(config, store, tmp_path):
    source = tmp_path / "photos"
    (source / "bicycle").mkdir(parents=True)
    (source / "bicycle" / "a.png").write_bytes(b"x" * 100_000)
    result = run_pipeline_locally(listing_definition(store, source, exit_code=3), config,
                                  progress=False)
    assert result.status == "Failed" and "exited with code 3" in result.failure_reason
    step_dir = config.local.workspace / "executions" / result.execution_id / "List"
    assert not [p for p in step_dir.rglob("*") if p.is_file() and p.suffix == ".png"]


def test_an_input_folder_holding_the_workspace_fails_the_step_before_copying(tmp_path, store):
    project = tmp_path / "project"
    config = load_config("local", overrides={"local.workspace": str(project / ".scones")})
    store = LocalObjectStore(config.local.workspace / "s3")
    (project / "bicycle").mkdir(parents=True)
    (project / "bicycle" / "a.png").write_bytes(b"x")
    result = run_pipeline_locally(listing_definition(store, project), config, progress=False)
    assert result.status == "Failed"
    assert f"input {project} contains the workspace {project / '.scones'}" in \
        result.failure_reason
    step_dir = config.local.workspace / "executions" / result.execution_id / "List"
    assert not (step_dir / "processing" / "in").exists()


# --- runs whose runner is gone -------------------------------------------------------------------

def test_a_run_whose_owner_is_gone_is_marked_failed_and_a_live_one_is_not(config):
    import os
    import subprocess
    import sys

    records = ExecutionStore(Workspace(config.local.workspace))
    records.start("live", "arn:live", "p", "2026-01-01T00:00:00.000+00:00", {}, {"Steps": []})
    records.start("dead", "arn:dead", "p", "2026-01-01T00:00:01.000+00:00", {}, {"Steps": []})
    records.step_started("dead", "Train", "Training", None)
    records.start("reused", "arn:reused", "p", "2026-01-01T00:00:02.000+00:00", {}, None)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    with sqlite3.connect(config.local.workspace / "registry.sqlite") as db:
        db.execute("UPDATE pipeline_executions SET owner_pid = ? WHERE execution_id = 'dead'",
                   (int(gone),))
        # this process's pid, but another start time: the pid was reused
        db.execute("UPDATE pipeline_executions SET owner_started = '1' "
                   "WHERE execution_id = 'reused'")
    listed = {e["ExecutionId"]: e for e in records.list()}
    assert listed["live"]["Status"] == "Executing"
    assert listed["dead"]["Status"] == "Failed"
    assert listed["dead"]["FailureReason"].startswith(
        f"runner process {gone} ended without finishing (killed?) at step Train")
    assert listed["dead"]["Steps"][0]["Status"] == "Failed"
    assert listed["reused"]["Status"] == "Failed"
    assert f"runner process {os.getpid()} ended without finishing (killed?) between steps" in \
        listed["reused"]["FailureReason"]


def test_a_corrupted_cached_output_is_a_logged_miss_and_the_step_runs_again(config, store,
                                                                             capsys):
    definition = cached_definition(store)
    first = run_pipeline_locally(definition, config, progress=False)
    (output,) = store.list_urls(f"s3://{BUCKET}/test/{first.execution_id}/Count/output/count")
    store.path_for(output).write_bytes(b"damaged on disk")  # same name, other bytes

    second = run_pipeline_locally(definition, config, progress=True)
    assert count_hit(second) is None  # not reused: the step ran again
    assert (config.local.workspace / "executions" / second.execution_id / "Count"
            / "log.txt").is_file()
    said = capsys.readouterr().err
    assert "cache miss" in said and "content hash" in said and first.execution_id in said
    # the new run's outputs are whole, and they are what the next run reuses
    third = run_pipeline_locally(definition, config, progress=False)
    assert count_hit(third) == second.execution_arn


def _tmpfs(folder, size: str):
    """A tiny real file system (a full disk within reach); skipped where mounting is not
    allowed (not root)."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return folder


def test_a_full_disk_during_a_job_records_the_last_real_error_line(tmp_path):
    """The job fills the disk its log is on: the recorded reason names the job's own last
    error (OSError ... No space left on device), not the traceback header it got cut at."""
    import subprocess
    import sys

    from scones.local.pipeline_runner.container import StepFailed, run_job

    disk = _tmpfs(tmp_path / "disk", "256k")
    try:
        script = textwrap.dedent("""
            import os, sys
            for epoch in range(3):
                print(f"epoch {epoch} loss 0.5", flush=True)
            def save(path):
                with open(path, "wb") as out:
                    while True:
                        out.write(b"x" * 65536)
                        out.flush()
            save(os.path.join(sys.argv[1], "model.pt"))
        """)
        step_dir = disk / "Train"
        step_dir.mkdir()
        with pytest.raises(StepFailed) as failed:
            run_job("Train", [sys.executable, "-c", script, str(step_dir)], {}, tmp_path,
                    step_dir, step_dir / "log.txt", on_line=lambda line: None)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    reason = str(failed.value)
    first_line = reason.splitlines()[0]
    assert "OSError: [Errno 28] No space left on device" in first_line, reason
    assert first_line.startswith("step Train exited with code 1")
    assert "epoch 2 loss 0.5" in reason  # the tail is still there, below it
