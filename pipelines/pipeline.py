"""The model-build SageMaker Pipeline, in the shape of the SageMaker project template.

    Preprocess -> Train -> Evaluate -> CheckAccuracy -> Register-RegisterModel (pending approval)
                        \\-> Baseline -------------/ \\-> AccuracyBelowThreshold (Fail, with the reason)

Baseline (jobs/baseline.py) profiles the model's predictions on the test split for monitoring;
its statistics.json/constraints.json are registered with the package (DriftCheckBaselines and
ModelMetrics' ModelDataQuality), so each version carries its own baseline.

`get_pipeline(config, sagemaker_session)` is a plain factory. The same definition JSON runs on
SageMaker and on this machine (scones.local.pipeline_runner): pipelines.executors runs it.
Building it needs S3, because the SDK uploads the job code: on AWS that is the real bucket;
locally it is moto's, and the uploaded objects are copied into the workspace's object store so
every s3:// URL in the definition resolves there.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any, Callable

from lambdas.classify_image_batch import BATCH_CONTENT_TYPE
from scones import sdk as sdk_module
from scones.backend import backend_for
from scones.config import AWS_SETTINGS, Config, load_config
from scones.errors import SconesError
from scones.registry import (CONFIDENCE_THRESHOLD_PROPERTY, DATA_SNAPSHOT_PROPERTY,
                             OOD_THRESHOLD_PROPERTY, PARENT_SNAPSHOT_PROPERTY,
                             TEST_DATA_PROPERTY)
from scones.sdk import pipeline_session, sagemaker_defaults_fingerprint, sagemaker_sdk
from scones.snapshots import newest_snapshot, snapshot_source

JOBS_DIR = Path(__file__).resolve().parent / "jobs"

# The names below are the contract with the job scripts (argument and file names) and with
# anything that reads an execution (step names).
PREPROCESS, TRAIN, EVALUATE, CHECK = "Preprocess", "Train", "Evaluate", "CheckAccuracy"
REGISTER, FAIL, BASELINE = "Register", "AccuracyBelowThreshold", "Baseline"
# The monitored features' code, shipped next to jobs/baseline.py (a file, not an import: the
# model build does not import the workflow).
MONITORING_PROFILE = JOBS_DIR.parent.parent / "workflow" / "monitoring" / "profile.py"
EVALUATION_REPORT = "EvaluationReport"
ACCURACY_JSON_PATH = "binary_classification_metrics.accuracy.value"
THRESHOLD_JSON_PATH = "custom_metrics.selective_prediction.confidence_threshold"
OOD_THRESHOLD_JSON_PATH = "custom_metrics.out_of_distribution.ood_threshold"
PREPROCESS_REPORT = "PreprocessReport"
PARENT_SNAPSHOT_JSON_PATH = "snapshot.parent"
# What the model's inference.py answers (its SUPPORTED_CONTENT_TYPES, a test keeps them
# equal): images, and the bulk workflow's batch of images.
CONTENT_TYPES = ["image/png", "image/jpeg", "application/x-image", BATCH_CONTENT_TYPE]

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
    "base_job_prefix": "pipeline.base_job_prefix",
    "sagemaker_project_name": "pipeline.sagemaker_project_name",
    "sagemaker_project_arn": "pipeline.sagemaker_project_arn",
}


def config_from_template_kwargs(env: str = "aws", tags: list[dict] | None = None,
                                **kwargs: Any) -> Config:
    """Our Config from the template's keyword arguments; `tags` (run-pipeline --tags, a list
    of {"Key", "Value"}) go on the pipeline and every job it starts."""
    unknown = sorted(set(kwargs) - set(TEMPLATE_KWARGS))
    if unknown:
        raise SconesError(f"unknown pipeline argument(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(TEMPLATE_KWARGS))}")
    overrides = {TEMPLATE_KWARGS[k]: v for k, v in kwargs.items()}
    if tags:
        overrides["pipeline.tags"] = _tag_mapping(tags)
    # Without input_data_url (the AWS templates pass none) the newest data snapshot in the
    # bucket is the input (training_data_url), so the config need not name one.
    return load_config(env, overrides=overrides,
                       aws_needs=tuple(k for k in AWS_SETTINGS if k != "data.input_url"))


def _tag_mapping(tags: Any) -> dict[str, str]:
    if not isinstance(tags, list) or not all(
            isinstance(t, dict) and isinstance(t.get("Key"), str)
            and isinstance(t.get("Value"), str) for t in tags):
        raise SconesError(f"--tags must be a JSON list of {{\"Key\": ..., \"Value\": ...}} "
                          f"objects with string values, got {tags!r}")
    return {t["Key"]: t["Value"] for t in tags}


def get_pipeline(config: Config | None = None, sagemaker_session=None, **template_kwargs):
    """The model-build Pipeline. `config` is our typed Config; the template's keyword
    arguments (region, role, default_bucket, ...) are accepted in its place."""
    sagemaker = sagemaker_sdk()
    from sagemaker.model import Model
    from sagemaker.drift_check_baselines import DriftCheckBaselines
    from sagemaker.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.processing import (FrameworkProcessor, ProcessingInput, ProcessingOutput,
                                      ScriptProcessor)
    from sagemaker.pytorch import PyTorch
    from sagemaker.inputs import TrainingInput
    from sagemaker.workflow.condition_step import ConditionStep
    from sagemaker.workflow.conditions import ConditionGreaterThanOrEqualTo
    from sagemaker.workflow.fail_step import FailStep
    from sagemaker.workflow.functions import Join, JsonGet
    from sagemaker.workflow.model_step import ModelStep
    from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.workflow.pipeline import Pipeline
    from sagemaker.workflow.pipeline_definition_config import PipelineDefinitionConfig
    from sagemaker.workflow.properties import PropertyFile
    from sagemaker.workflow.steps import CacheConfig, ProcessingStep, TrainingStep

    if config is None:
        config = config_from_template_kwargs(**template_kwargs)
    elif template_kwargs:
        raise TypeError("pass either config or the template's keyword arguments, not both")
    session = sagemaker_session or pipeline_session(config)
    role = config.aws.role_arn
    pc = config.pipeline
    # The template's base_job_prefix names every job (<prefix>-preprocess-<time>...);
    # its project tags go on every job (and the pipeline, at upsert) so Studio finds them.
    job_prefix = pc.base_job_prefix or config.project
    tags = pc.resource_tags() or None

    input_data_url = ParameterString("InputDataUrl", default_value=training_data_url(config))
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
    # A step whose inputs (data, code, arguments) match an earlier successful run within
    # cache_expire_after reuses its outputs, on SageMaker and in the local runner alike.
    cache = CacheConfig(enable_caching=pc.cache_steps, expire_after=pc.cache_expire_after)

    def processor(job: str) -> ScriptProcessor:
        return ScriptProcessor(
            image_uri=processing_image, command=["python3"], role=role,
            instance_type=processing_instance_type, instance_count=1,
            base_job_name=f"{job_prefix}-{job}", tags=tags, sagemaker_session=session)

    # Preprocess ships the jobs folder as its source_dir (as Train does), so preprocess.py
    # imports the one decoder (image_decoding.py) that inference.py serves with.
    preprocessor = FrameworkProcessor(
        estimator_cls=PyTorch, framework_version=pc.framework_version,
        py_version=pc.py_version, image_uri=processing_image, command=["python3"],
        role=role, instance_type=processing_instance_type, instance_count=1,
        base_job_name=f"{job_prefix}-preprocess", tags=tags, sagemaker_session=session)
    preprocess_report = PropertyFile(name=PREPROCESS_REPORT, output_name="report",
                                     path="report.json")
    step_preprocess = ProcessingStep(
        name=PREPROCESS,
        cache_config=cache,
        property_files=[preprocess_report],
        step_args=preprocessor.run(
            code="preprocess.py", source_dir=str(JOBS_DIR),
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
        base_job_name=f"{job_prefix}-train", tags=tags,
        output_path=f"s3://{config.aws.bucket}/{pc.name}/models",
        hyperparameters={
            "epochs": epochs, "learning-rate": learning_rate,
            "target-precision": config.training.target_precision,
            "batch-size": config.training.batch_size, "width": config.training.width,
            "seed": config.training.seed,
        },
        metric_definitions=METRIC_DEFINITIONS,
        sagemaker_session=session,
    )
    step_train = TrainingStep(
        name=TRAIN,
        cache_config=cache,
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

    step_baseline = ProcessingStep(
        name=BASELINE,
        step_args=processor("baseline").run(
            code=str(JOBS_DIR / "baseline.py"),
            inputs=[
                ProcessingInput(source=model_data, destination="/opt/ml/processing/model"),
                ProcessingInput(source=split_output("test"), destination="/opt/ml/processing/data"),
                ProcessingInput(source=str(MONITORING_PROFILE), input_name="profile",
                                destination="/opt/ml/processing/input/profile"),
            ],
            outputs=[ProcessingOutput(output_name="baseline",
                                      source="/opt/ml/processing/baseline")],
            arguments=["--model-dir", "/opt/ml/processing/model",
                       "--data-dir", "/opt/ml/processing/data",
                       "--output-dir", "/opt/ml/processing/baseline",
                       "--profile-dir", "/opt/ml/processing/input/profile",
                       "--comparison-threshold", str(config.monitoring.drift_threshold)],
        ),
    )
    baseline_url = step_baseline.properties.ProcessingOutputConfig.Outputs[
        "baseline"].S3Output.S3Uri

    def baseline_file(name: str) -> MetricsSource:
        return MetricsSource(s3_uri=Join(on="/", values=[baseline_url, name]),
                             content_type="application/json")

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
            model_metrics=ModelMetrics(
                model_statistics=MetricsSource(
                    s3_uri=Join(on="/", values=[evaluation_url, "evaluation.json"]),
                    content_type="application/json"),
                model_data_statistics=baseline_file("statistics.json"),
                model_data_constraints=baseline_file("constraints.json")),
            drift_check_baselines=DriftCheckBaselines(
                model_data_statistics=baseline_file("statistics.json"),
                model_data_constraints=baseline_file("constraints.json")),
            # The threshold train.py chose on validation for training.target_precision: it
            # travels with the version, and deployment hands it to the filter step.
            customer_metadata_properties={
                CONFIDENCE_THRESHOLD_PROPERTY: Join(on="", values=[JsonGet(
                    step_name=step_evaluate.name, property_file=evaluation_report,
                    json_path=THRESHOLD_JSON_PATH)]),
                # Its "not a vehicle" threshold (train.py, on validation), for the record: the
                # endpoint answers with the artifact's own, which the filter applies.
                OOD_THRESHOLD_PROPERTY: Join(on="", values=[JsonGet(
                    step_name=step_evaluate.name, property_file=evaluation_report,
                    json_path=OOD_THRESHOLD_JSON_PATH)]),
                # The held-back images this version was judged on (the staging test uses
                # them). A property, not a path built from the execution id: a cached
                # Preprocess lives in the execution that computed it.
                TEST_DATA_PROPERTY: split_output("test"),
                # Lineage: the data snapshot this version learnt from, and the one that
                # snapshot extends (from Preprocess's report: the manifest says).
                DATA_SNAPSHOT_PROPERTY: input_data_url,
                PARENT_SNAPSHOT_PROPERTY: Join(on="", values=[JsonGet(
                    step_name=step_preprocess.name, property_file=preprocess_report,
                    json_path=PARENT_SNAPSHOT_JSON_PATH)])},
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
        steps=[step_preprocess, step_train, step_evaluate, step_baseline, step_check],
        sagemaker_session=session,
        # keep each job's base name in the definition, so SageMaker names the jobs
        # <base_job_prefix>-preprocess-<time>... instead of pipelines-<random>-Preprocess-...
        pipeline_definition_config=PipelineDefinitionConfig(use_custom_job_prefix=True),
    )


def training_data_url(config: Config) -> str:
    """InputDataUrl's default, a data snapshot wherever the data's place allows, so the URL
    changes with the data (SageMaker's step cache keys on it, not on the data behind it).

    data.input_url unset (the SageMaker project templates pass no input URL): the newest
    snapshot in the project's bucket, or SnapshotError saying how to make one. A local folder:
    its snapshot in the bucket (made once; the same files give the same snapshot). An s3://
    URL: as given - a snapshot URL, or a plain prefix by explicit choice (then the cache keys
    on the prefix: make it a snapshot with `scones data snapshot s3://PREFIX`)."""
    url = config.data.input_url
    if not url:
        return newest_snapshot(backend_for(config).object_store(), config.aws.bucket).url
    if "://" in url:
        return url
    return snapshot_source(backend_for(config).object_store(), config.aws.bucket, url).url


def pipeline_definition(config: Config, factory: Callable | None = None) -> dict:
    """The definition as SageMaker receives it, rendered by the SDK on the backend's pipeline
    session (on AWS against the real bucket; locally against moto's S3, with what the SDK
    uploaded copied into the workspace's object store). `factory` is the get_pipeline to use
    (the template CLIs' --module-name); default: this module's, whose definition the backend
    may keep (locally: reused while its key and the uploaded code are unchanged)."""
    key = definition_cache_key(config) if factory is None else None
    return backend_for(config).pipeline_definition(
        lambda session: (factory or get_pipeline)(config, session), cache_key=key)


# What the definition is built from, besides the config: this package's code, the job code
# it uploads, the monitored features' code, and how the SDK session is made.
DEFINITION_SOURCES = (Path(__file__), Path(__file__).with_name("parameters.py"),
                      MONITORING_PROFILE, Path(sdk_module.__file__))


def definition_cache_key(config: Config) -> str | None:
    """A hash of everything the definition depends on: the whole config, the sources above
    and every file of jobs/, the SageMaker SDK's version and its defaults config. None when
    that config cannot be known without the SDK (then nothing is reused)."""
    defaults = sagemaker_defaults_fingerprint()
    if defaults is None:
        return None
    digest = hashlib.sha256()
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    digest.update(importlib.metadata.version("sagemaker").encode())
    digest.update(defaults)
    files = list(DEFINITION_SOURCES) + sorted(p for p in JOBS_DIR.rglob("*")
                                              if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(path.parents[1])).encode())
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()[:32]
