"""The model-build SageMaker Pipeline, in the shape of the SageMaker project template.

    Preprocess -> Train -> Evaluate -> CheckAccuracy -> Register-RegisterModel (pending approval)
                                                   \\-> AccuracyBelowThreshold (Fail, with the reason)

`get_pipeline(config, sagemaker_session)` is a plain factory. The same definition JSON runs on
SageMaker (`upsert_and_start`) and on this machine (`local_definition` + pipelines.local_runner).
Building it needs S3, because the SDK uploads the job code: on AWS that is the real bucket;
locally it is moto's, and the uploaded objects are copied into the workspace's object store so
every s3:// URL in the definition resolves there.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from pipelines.config import Config, load_config
from pipelines.errors import SconesError
from pipelines.sdk import SAGEMAKER_CONFIG, sagemaker_sdk
from pipelines.storage import LocalObjectStore, S3ObjectStore

JOBS_DIR = Path(__file__).resolve().parent / "jobs"

# The names below are the contract with the job scripts (argument and file names) and with
# anything that reads an execution (step names).
PREPROCESS, TRAIN, EVALUATE, CHECK = "Preprocess", "Train", "Evaluate", "CheckAccuracy"
REGISTER, FAIL = "Register", "AccuracyBelowThreshold"
EVALUATION_REPORT = "EvaluationReport"
ACCURACY_JSON_PATH = "binary_classification_metrics.accuracy.value"
CONTENT_TYPES = ["image/png", "image/jpeg", "application/x-image"]

# Parsed from train.py's per-epoch line, e.g.
# "epoch 3/30 train_loss=0.4123 train_accuracy=0.8125 validation_loss=0.3912 validation_accuracy=0.8400"
METRIC_DEFINITIONS = [
    {"Name": name, "Regex": rf"{name}=([0-9.]+)"}
    for name in ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy")
]

# get_pipeline's keyword arguments as the SageMaker project template passes them
# (run-pipeline --kwargs '{"region": ..., "role": ...}'), mapped onto our config keys.
TEMPLATE_KWARGS = {
    "region": "aws.region",
    "role": "aws.role_arn",
    "default_bucket": "aws.bucket",
    "pipeline_name": "pipeline.name",
    "model_package_group_name": "pipeline.model_package_group",
    "input_data_url": "data.input_url",
}


def config_from_template_kwargs(env: str = "aws", **kwargs: Any) -> Config:
    unknown = sorted(set(kwargs) - set(TEMPLATE_KWARGS))
    if unknown:
        raise SconesError(f"unknown pipeline argument(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(TEMPLATE_KWARGS))}")
    return load_config(env, overrides={TEMPLATE_KWARGS[k]: v for k, v in kwargs.items()})


def pipeline_session(config: Config, boto_session=None):
    """A PipelineSession on the configured region and bucket, with telemetry opted out."""
    sagemaker_sdk()
    import boto3
    from sagemaker.workflow.pipeline_context import PipelineSession

    boto_session = boto_session or boto3.Session(region_name=config.aws.region)
    return PipelineSession(boto_session=boto_session, default_bucket=config.aws.bucket,
                           sagemaker_config=SAGEMAKER_CONFIG)


def get_pipeline(config: Config | None = None, sagemaker_session=None, **template_kwargs):
    """The model-build Pipeline. `config` is our typed Config; the template's keyword
    arguments (region, role, default_bucket, ...) are accepted in its place."""
    sagemaker = sagemaker_sdk()
    from sagemaker.model import Model
    from sagemaker.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.processing import ProcessingInput, ProcessingOutput, ScriptProcessor
    from sagemaker.pytorch import PyTorch
    from sagemaker.inputs import TrainingInput
    from sagemaker.workflow.condition_step import ConditionStep
    from sagemaker.workflow.conditions import ConditionGreaterThanOrEqualTo
    from sagemaker.workflow.fail_step import FailStep
    from sagemaker.workflow.functions import Join, JsonGet
    from sagemaker.workflow.model_step import ModelStep
    from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.workflow.pipeline import Pipeline
    from sagemaker.workflow.properties import PropertyFile
    from sagemaker.workflow.steps import ProcessingStep, TrainingStep

    if config is None:
        config = config_from_template_kwargs(**template_kwargs)
    elif template_kwargs:
        raise TypeError("pass either config or the template's keyword arguments, not both")
    session = sagemaker_session or pipeline_session(config)
    role = config.aws.role_arn
    pc = config.pipeline

    input_data_url = ParameterString("InputDataUrl", default_value=config.data.input_url)
    processing_instance_type = ParameterString("ProcessingInstanceType",
                                               default_value=pc.processing_instance_type)
    training_instance_type = ParameterString("TrainingInstanceType",
                                             default_value=pc.training_instance_type)
    epochs = ParameterInteger("Epochs", default_value=config.training.epochs)
    learning_rate = ParameterFloat("LearningRate", default_value=config.training.learning_rate)
    accuracy_threshold = ParameterFloat("AccuracyThreshold", default_value=pc.accuracy_threshold)
    model_approval_status = ParameterString("ModelApprovalStatus",
                                            default_value=pc.model_approval_status)

    # The PyTorch framework images carry torch, numpy and Pillow: the processing jobs use the
    # training image, the registered model the inference one.
    def image(scope: str, instance_type: str) -> str:
        return sagemaker.image_uris.retrieve(
            "pytorch", region=config.aws.region, version=pc.framework_version,
            py_version=pc.py_version, image_scope=scope, instance_type=instance_type)

    processing_image = image("training", pc.processing_instance_type)

    def processor(job: str) -> ScriptProcessor:
        return ScriptProcessor(
            image_uri=processing_image, command=["python3"], role=role,
            instance_type=processing_instance_type, instance_count=1,
            base_job_name=f"{config.project}-{job}", sagemaker_session=session)

    step_preprocess = ProcessingStep(
        name=PREPROCESS,
        step_args=processor("preprocess").run(
            code=str(JOBS_DIR / "preprocess.py"),
            inputs=[ProcessingInput(source=input_data_url,
                                    destination="/opt/ml/processing/input/data")],
            outputs=[ProcessingOutput(output_name=split, source=f"/opt/ml/processing/{split}")
                     for split in ("train", "validation", "test", "report")],
            arguments=[
                "--input-dir", "/opt/ml/processing/input/data",
                "--output-dir", "/opt/ml/processing",
                "--classes", ",".join(config.classes),
                "--validation-fraction", str(config.data.validation_fraction),
                "--test-fraction", str(config.data.test_fraction),
                "--max-corrupt-fraction", str(config.data.max_corrupt_fraction),
                "--seed", str(config.data.seed),
            ],
        ),
    )

    def split_output(split: str):
        return step_preprocess.properties.ProcessingOutputConfig.Outputs[split].S3Output.S3Uri

    estimator = PyTorch(
        entry_point="train.py", source_dir=str(JOBS_DIR),
        framework_version=pc.framework_version, py_version=pc.py_version,
        role=role, instance_type=training_instance_type, instance_count=1,
        base_job_name=f"{config.project}-train",
        output_path=f"s3://{config.aws.bucket}/{pc.name}/models",
        hyperparameters={
            "epochs": epochs, "learning-rate": learning_rate,
            "batch-size": config.training.batch_size, "width": config.training.width,
            "seed": config.training.seed,
        },
        metric_definitions=METRIC_DEFINITIONS,
        sagemaker_session=session,
    )
    step_train = TrainingStep(
        name=TRAIN,
        step_args=estimator.fit({
            "train": TrainingInput(split_output("train"), content_type="application/x-npz"),
            "validation": TrainingInput(split_output("validation"),
                                        content_type="application/x-npz"),
        }),
    )
    model_data = step_train.properties.ModelArtifacts.S3ModelArtifacts

    evaluation_report = PropertyFile(name=EVALUATION_REPORT, output_name="evaluation",
                                     path="evaluation.json")
    step_evaluate = ProcessingStep(
        name=EVALUATE,
        step_args=processor("evaluate").run(
            code=str(JOBS_DIR / "evaluate.py"),
            inputs=[
                ProcessingInput(source=model_data, destination="/opt/ml/processing/model"),
                ProcessingInput(source=split_output("test"), destination="/opt/ml/processing/test"),
            ],
            outputs=[ProcessingOutput(output_name="evaluation",
                                      source="/opt/ml/processing/evaluation")],
            arguments=["--model-dir", "/opt/ml/processing/model",
                       "--test-dir", "/opt/ml/processing/test",
                       "--output-dir", "/opt/ml/processing/evaluation"],
        ),
        property_files=[evaluation_report],
    )
    evaluation_url = step_evaluate.properties.ProcessingOutputConfig.Outputs[
        "evaluation"].S3Output.S3Uri
    accuracy = JsonGet(step_name=step_evaluate.name, property_file=evaluation_report,
                       json_path=ACCURACY_JSON_PATH)

    # model.tar.gz already holds code/inference.py (train.py puts it there), so the model is
    # registered as is: no repack step, and the PyTorch serving container finds the code.
    model = Model(
        image_uri=image("inference", pc.inference_instance_type), model_data=model_data,
        role=role, sagemaker_session=session,
        env={"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
             "SAGEMAKER_CONTAINER_LOG_LEVEL": "20"},
    )
    step_register = ModelStep(
        name=REGISTER,
        step_args=model.register(
            content_types=CONTENT_TYPES, response_types=["application/json"],
            inference_instances=[pc.inference_instance_type],
            transform_instances=[pc.inference_instance_type],
            model_package_group_name=pc.model_package_group,
            approval_status=model_approval_status,
            description="Scones Unlimited delivery-vehicle classifier "
                        f"({' vs '.join(config.classes)})",
            model_metrics=ModelMetrics(model_statistics=MetricsSource(
                s3_uri=Join(on="/", values=[evaluation_url, "evaluation.json"]),
                content_type="application/json")),
        ),
    )
    step_fail = FailStep(
        name=FAIL,
        error_message=Join(on=" ", values=[
            "Model accuracy", accuracy, "on the test split is below the AccuracyThreshold",
            accuracy_threshold, "- nothing was registered."]),
    )
    step_check = ConditionStep(
        name=CHECK,
        conditions=[ConditionGreaterThanOrEqualTo(left=accuracy, right=accuracy_threshold)],
        if_steps=[step_register],
        else_steps=[step_fail],
    )
    return Pipeline(
        name=pc.name,
        parameters=[input_data_url, processing_instance_type, training_instance_type, epochs,
                    learning_rate, accuracy_threshold, model_approval_status],
        steps=[step_preprocess, step_train, step_evaluate, step_check],
        sagemaker_session=session,
    )


def pipeline_definition(config: Config, factory: Callable | None = None) -> dict:
    """The definition as SageMaker receives it: on AWS rendered by the SDK against the real
    bucket, locally by `local_definition`. `factory` is the get_pipeline to use (the template
    CLIs' --module-name); default: this module's."""
    if config.is_local:
        return local_definition(config, factory)
    return json.loads((factory or get_pipeline)(config).definition())


def local_definition(config: Config, factory: Callable | None = None) -> dict:
    """Build the definition exactly as for AWS, against moto's S3, and copy what the SDK
    uploaded (job code, sourcedir.tar.gz) into the workspace's object store."""
    sagemaker_sdk()
    import boto3
    from moto import mock_aws

    store = LocalObjectStore(config.workspace / "s3")
    with mock_aws():
        boto_session = boto3.Session(region_name=config.aws.region)
        s3 = boto_session.client("s3")
        s3.create_bucket(Bucket=config.aws.bucket)
        definition = json.loads((factory or get_pipeline)(
            config, pipeline_session(config, boto_session)).definition())
        uploaded = S3ObjectStore(s3)
        for url in uploaded.list_urls(f"s3://{config.aws.bucket}/"):
            store.write_bytes(url, uploaded.read_bytes(url))
    return definition


# --- AWS: upsert, start, follow --------------------------------------------------------------

def upsert_and_start(config: Config, parameters: Mapping[str, Any] | None = None,
                     wait: bool = False, sagemaker_session=None, description: str | None = None,
                     tags: list[dict] | None = None,
                     on_step: Callable[[dict], None] | None = None,
                     poll_seconds: float = 30.0, factory: Callable | None = None) -> dict:
    """Create or update the pipeline on SageMaker and start an execution.

    Returns {"execution_arn", "status", "steps", "failure_reason"}; with wait=True it follows
    the execution to its end, calling on_step for each step status change. `factory` is the
    get_pipeline to use (run-pipeline's --module-name); default: this module's.
    """
    pipeline = (factory or get_pipeline)(config, sagemaker_session)
    known = {p.name for p in pipeline.parameters}
    unknown = sorted(set(parameters or {}) - known)
    if unknown:
        raise SconesError(f"unknown pipeline parameter(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    pipeline.upsert(role_arn=config.aws.role_arn, description=description, tags=tags)
    execution = pipeline.start(parameters=dict(parameters or {}))
    client = pipeline.sagemaker_session.sagemaker_client
    arn = execution.arn
    seen: dict[str, str] = {}
    while True:
        described = client.describe_pipeline_execution(PipelineExecutionArn=arn)
        status = described["PipelineExecutionStatus"]
        steps = _execution_steps(client, arn)
        for step in steps:
            if on_step and seen.get(step["name"]) != step["status"]:
                on_step(step)
            seen[step["name"]] = step["status"]
        if not wait or status not in ("Executing", "Stopping"):
            return {"execution_arn": arn, "status": status, "steps": steps,
                    "failure_reason": described.get("FailureReason")}
        time.sleep(poll_seconds)


def _execution_steps(client, arn: str) -> list[dict]:
    steps = []
    try:
        pages = client.get_paginator("list_pipeline_execution_steps").paginate(
            PipelineExecutionArn=arn, SortOrder="Ascending")
        for page in pages:
            for step in page["PipelineExecutionSteps"]:
                start, end = step.get("StartTime"), step.get("EndTime")
                steps.append({
                    "name": step["StepName"], "type": step.get("StepType"),
                    "status": step["StepStatus"],
                    "seconds": round((end - start).total_seconds(), 1) if start and end else None,
                    "failure_reason": step.get("FailureReason"),
                })
    except client.exceptions.ClientError as exc:
        # moto (the test double) does not implement this call; SageMaker does.
        if exc.response["Error"]["Code"] not in ("NotImplemented", "InvalidAction"):
            raise
    except NotImplementedError:
        pass
    return steps


def print_step(step: dict) -> None:
    seconds = f" ({step['seconds']} s)" if step.get("seconds") is not None else ""
    print(f"  {step['name']:<28} {step['status']}{seconds}", file=sys.stderr)
