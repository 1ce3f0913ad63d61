"""Configuration: configs/base.yaml plus one environment overlay, merged and validated once.

The result is one frozen, typed `Config` that callers pass down. No other module reads
YAML or environment variables for settings: this is the one place.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from scones.errors import ConfigError

_SOURCE_TREE = Path(__file__).resolve().parent.parent
# In a source checkout the configs are the repository's configs/ folder; an installed wheel
# carries the same files as package data, scones/configs/ (setup.py maps one onto the other).
CONFIG_DIR = (_SOURCE_TREE / "configs" if (_SOURCE_TREE / "setup.py").is_file()
              else Path(__file__).resolve().parent / "configs")
ENVIRONMENTS = ("local", "aws")
DATA_CAPTURE_PREFIX = "datacapture"
STAGES = ("staging", "prod")  # the order a version goes through (infra/deploy_state_machine)
# The Lambda runtime of every function the project deploys (CloudFormation, `workflow
# deploy`, the local engine). python3.13: supported until 2029-06 (AWS Lambda runtimes page).
LAMBDA_RUNTIME = "python3.13"


@dataclass(frozen=True)
class DataConfig:
    input_url: str | None
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    max_corrupt_fraction: float = 0.05
    seed: int = 42


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 50
    learning_rate: float = 0.01
    batch_size: int = 64
    width: int = 16
    seed: int = 42
    # train.py picks each version's confidence threshold on validation data for this
    # precision (share right among the images that pass); it travels with the model.
    target_precision: float = 0.98


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    model_package_group: str
    accuracy_threshold: float = 0.8
    model_approval_status: str = "PendingManualApproval"
    processing_instance_type: str = "ml.m5.large"
    training_instance_type: str = "ml.m5.xlarge"
    inference_instance_type: str = "ml.m5.large"
    framework_version: str = "2.6.0"
    py_version: str = "py312"
    cache_steps: bool = True             # CacheConfig on Preprocess and Train
    cache_expire_after: str = "P30D"     # ISO 8601 duration: how old a reusable run may be

    # What a SageMaker project template passes (run-pipeline --kwargs / --tags): the prefix of
    # every job name, and the tags put on the pipeline and every resource it creates.
    base_job_prefix: str | None = None
    sagemaker_project_name: str | None = None
    sagemaker_project_arn: str | None = None
    # {key: value} in YAML and --set, kept as ((key, value), ...) so a Config stays hashable
    tags: tuple[tuple[str, str], ...] = ()

    def resource_tags(self) -> list[dict]:
        """[{"Key", "Value"}] for the pipeline and its jobs and models: the configured tags
        plus sagemaker:project-name when the pipeline belongs to a SageMaker project (that
        tag is how Studio lists a project's pipelines, jobs and models)."""
        tags = dict(self.tags)
        if self.sagemaker_project_name:
            tags.setdefault("sagemaker:project-name", self.sagemaker_project_name)
        return [{"Key": key, "Value": value} for key, value in tags.items()]


@dataclass(frozen=True)
class WorkflowConfig:
    state_machine_name: str
    endpoint_name: str
    # The filter's threshold: the deployed model version's own (chosen for
    # training.target_precision and registered with it) unless use_model_threshold is false
    # or the version has none; then this value.
    confidence_threshold: float = 0.8
    use_model_threshold: bool = True
    lambda_prefix: str = "scones"
    max_concurrency: int = 8


@dataclass(frozen=True)
class MonitoringConfig:
    capture_sampling_percentage: int = 100
    drift_threshold: float = 0.2         # smallest drift distance (KS / L-infinity) that counts
    drift_confidence: float = 0.99       # ... and it must also exceed chance at this confidence
    min_records: int = 20                # fewer records in a run: no drift verdict
    min_labels: int = 30                 # fewer labelled records of a version: no quality verdict
    accuracy_tolerance: float = 0.05     # quality constraint: registered accuracy minus this
    alarm_violations: int = 1            # violations in one run that raise the alarm (retrain)
    retrain_cooldown_hours: float = 24.0  # at most one retraining run per cool-down
    metrics_namespace: str = "Scones/Monitoring"
    schedule_expression: str = "rate(1 hour)"  # the monitoring job's EventBridge schedule


@dataclass(frozen=True)
class StageConfig:
    """One deployment stage (as infra/deploy_state_machine.py's per-stage parameters)."""
    endpoint_name: str | None = None     # default: staging <endpoint>-staging, prod <endpoint>
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    capture_sampling_percentage: int | None = None  # default: monitoring's
    min_capacity: int = 1                # autoscaling (AWS)
    max_capacity: int = 1
    bake_seconds: float = 0.0            # watched after the switch; rolled back on alarm
    bake_probe_interval_seconds: float = 1.0
    max_error_rate: float = 0.05         # the alarm's limit: errors / requests while baking
    test_images: int = 40                # held-back test-split images the stage test sends
    test_min_accuracy: float = 0.8
    test_max_failure_rate: float = 0.05  # failed executions (not low confidence) / images
    # AWS: UpdateEndpoint's guardrails (none without alarms; the project template makes
    # <project>-<stage>-invocation-5xx and -model-latency)
    rollback_alarms: tuple[str, ...] = ()
    traffic_routing: str = "CANARY"      # CANARY | LINEAR | ALL_AT_ONCE
    traffic_step_percent: int = 10
    traffic_wait_seconds: int = 300


@dataclass(frozen=True)
class DeploymentConfig:
    staging: StageConfig = field(default_factory=StageConfig)
    prod: StageConfig = field(default_factory=StageConfig)


@dataclass(frozen=True)
class AwsConfig:
    region: str = "us-east-1"
    role_arn: str | None = None          # SageMaker execution role (pipeline jobs, models)
    bucket: str | None = None
    lambda_role_arn: str | None = None   # execution role of the workflow's Lambdas
    states_role_arn: str | None = None   # role the Step Functions state machine assumes


@dataclass(frozen=True)
class LocalConfig:
    workspace: Path = Path(".scones")


@dataclass(frozen=True)
class Config:
    env: str
    project: str
    classes: tuple[str, ...]
    data: DataConfig
    training: TrainingConfig
    pipeline: PipelineConfig
    workflow: WorkflowConfig
    monitoring: MonitoringConfig
    aws: AwsConfig
    local: LocalConfig
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    sources: tuple[str, ...] = field(default=(), compare=False)

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}: choose one of {', '.join(STAGES)}")
        return getattr(self.deployment, name)

    def stage_endpoint_name(self, name: str) -> str:
        """prod is the endpoint the inference workflow calls (workflow.endpoint_name);
        staging is <that>-staging unless configured."""
        configured = self.stage(name).endpoint_name
        if configured:
            return configured
        base = self.workflow.endpoint_name
        return base if name == "prod" else f"{base}-{name}"

    @property
    def data_capture_uri(self) -> str:
        """Where endpoints capture requests unless a deployment says otherwise (SageMaker's
        layout below it: <endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/<file>.jsonl)."""
        return f"s3://{self.aws.bucket}/{DATA_CAPTURE_PREFIX}"

    def replace(self, **changes: Any) -> "Config":
        """A copy with top-level sections swapped, e.g. cfg.replace(training=...)."""
        return dataclasses.replace(self, **changes)


def load_config(
    env: str = "local",
    overrides: Mapping[str, Any] | None = None,
    config_dir: Path | str | None = None,
    extra_files: tuple[Path | str, ...] = (),
    aws_needs: tuple[str, ...] | None = None,
) -> Config:
    """Merge base.yaml, <env>.yaml, any extra files and dotted overrides; validate; type.

    overrides: {"training.epochs": 5, "aws.role_arn": "..."}; reported as "--set" in errors.
    aws_needs: in the aws environment, the settings the caller needs (AWS_SETTINGS keys);
    all missing ones are reported in one error. None: all of AWS_SETTINGS.
    """
    if env not in ENVIRONMENTS:
        raise ConfigError(f"unknown environment {env!r}: choose one of {', '.join(ENVIRONMENTS)}")
    config_dir = Path(config_dir) if config_dir else CONFIG_DIR
    files = [config_dir / "base.yaml", config_dir / f"{env}.yaml", *map(Path, extra_files)]
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}  # dotted key -> file that last set it, for error messages
    for path in files:
        if not path.exists():
            if path.name == "base.yaml" or path in map(Path, extra_files):
                raise ConfigError(f"{path}: configuration file not found")
            continue
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, not {type(doc).__name__}")
        _merge(merged, doc, origin, str(path), prefix="")
    for dotted, value in (overrides or {}).items():
        _set_dotted(merged, dotted, value)
        origin[dotted] = "--set"
    root = project_root(config_dir)
    cfg = _build(Config, {"env": env, **merged}, origin, prefix="", root=root)
    input_url = cfg.data.input_url
    if input_url and "://" not in input_url:  # a local folder or archive: anchor it to the root
        input_url = str((root / Path(input_url).expanduser()).resolve())
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, input_url=input_url),
        sources=tuple(str(p) for p in files if p.exists()),
    )
    check_semantics(cfg, origin, config_dir,
                     AWS_SETTINGS.keys() if aws_needs is None else aws_needs)
    return cfg


def account_of(arn: str | None) -> str | None:
    """The account id inside an ARN (arn:aws:iam::<account>:role/x), None if it has none."""
    parts = (arn or "").split(":")
    return parts[4] if len(parts) > 4 and parts[4].isdigit() else None


def project_root(config_dir: Path) -> Path:
    """What relative paths in the configuration are relative to: the source checkout that
    holds config_dir (the folder with setup.py beside it), else - an installed package's own
    configs - the current directory."""
    parent = Path(config_dir).resolve().parent
    return parent if (parent / "setup.py").is_file() else Path.cwd().resolve()


def _merge(into: dict, doc: Mapping, origin: dict, source: str, prefix: str) -> None:
    for key, value in doc.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origin, source, prefix=f"{dotted}.")
        else:
            into[key] = value
        origin[dotted] = source


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is not a section")
    tree[last] = value


def _where(origin: dict, dotted: str) -> str:
    while dotted:
        if dotted in origin:
            return origin[dotted]
        dotted = dotted.rpartition(".")[0]
    return "configuration"


def _build(cls: type, values: Any, origin: dict, prefix: str, root: Path):
    if not isinstance(values, dict):
        raise ConfigError(
            f"{_where(origin, prefix.rstrip('.'))}: {prefix.rstrip('.')} must be a mapping"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "sources"}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(
            f"{_where(origin, key)}: unknown key {key!r} (known in this section: "
            f"{', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if dataclasses.is_dataclass(hints[name]):
                    values = {**values, name: {}}
                else:
                    raise ConfigError(f"{_where(origin, prefix.rstrip('.'))}: missing key {key!r}")
            else:
                continue
        kwargs[name] = _coerce(hints[name], values[name], key, origin, root)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str, origin: dict, root: Path) -> Any:
    where = _where(origin, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, origin, prefix=f"{key}.", root=root)
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: {key} must not be empty")
    if hint == tuple[tuple[str, str], ...]:  # a mapping of strings, e.g. pipeline.tags
        if isinstance(value, (list, tuple)) and all(
                isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            value = dict(value)
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(f"{where}: {key} must be a mapping of strings to strings, "
                              f"got {value!r}")
        return tuple(value.items())
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key} must be a list of strings, got {value!r}")
        return tuple(value)
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a path string, got {value!r}")
        if not value.strip():
            # '' would be the project root itself (registry.sqlite among the sources)
            raise ConfigError(f"{where}: {key} must not be empty: name a folder (e.g. "
                              f".scones) or leave the key out for its default")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (root / path).resolve()
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module


# The aws environment's settings that commands need, each with what it is; commands ask for
# theirs (load_config's aws_needs), so `registry list` does not demand a role or bucket.
AWS_SETTINGS = {
    "aws.role_arn": "the SageMaker execution role's ARN",
    "aws.bucket": "the bucket for pipeline artifacts, captures and new images",
    "data.input_url": "the s3:// URL of the training images",
}


def _dotted_value(cfg: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def check_semantics(cfg: Config, origin: dict, config_dir: Path,
                     aws_needs=tuple(AWS_SETTINGS)) -> None:
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{_where(origin, key)}: {key} {why}")

    if len(cfg.classes) < 2 or len(set(cfg.classes)) != len(cfg.classes):
        fail("classes", f"must name at least two distinct classes, got {list(cfg.classes)}")
    for key in ("validation_fraction", "test_fraction", "max_corrupt_fraction"):
        if not 0 <= getattr(cfg.data, key) < 1:
            fail(f"data.{key}", "must be in [0, 1)")
    if cfg.data.validation_fraction + cfg.data.test_fraction >= 0.9:
        fail("data.test_fraction", "plus data.validation_fraction leaves too little to train on")
    if cfg.training.epochs < 1:
        fail("training.epochs", "must be at least 1")
    if cfg.training.learning_rate <= 0:
        fail("training.learning_rate", "must be positive")
    if not 0.5 <= cfg.training.target_precision < 1:
        fail("training.target_precision", "must be in [0.5, 1)")
    for key, value in (("pipeline.accuracy_threshold", cfg.pipeline.accuracy_threshold),
                       ("workflow.confidence_threshold", cfg.workflow.confidence_threshold)):
        if not 0 <= value <= 1:
            fail(key, f"must be between 0 and 1, got {value}")
    if cfg.pipeline.model_approval_status not in ("PendingManualApproval", "Approved", "Rejected"):
        fail("pipeline.model_approval_status",
             "must be PendingManualApproval, Approved or Rejected")
    for stage in STAGES:
        settings = cfg.stage(stage)
        key = f"deployment.{stage}"
        if settings.instance_count < 1:
            fail(f"{key}.instance_count", "must be at least 1")
        if not 1 <= settings.min_capacity <= settings.max_capacity:
            fail(f"{key}.min_capacity", "must be at least 1 and at most max_capacity")
        if not 0 < (settings.capture_sampling_percentage or 100) <= 100:
            fail(f"{key}.capture_sampling_percentage", "must be in 1..100")
        if settings.bake_seconds < 0 or settings.bake_probe_interval_seconds <= 0:
            fail(f"{key}.bake_seconds", "must be >= 0 (and the probe interval > 0)")
        for name in ("max_error_rate", "test_min_accuracy", "test_max_failure_rate"):
            if not 0 <= getattr(settings, name) <= 1:
                fail(f"{key}.{name}", "must be between 0 and 1")
        if settings.test_images < 1:
            fail(f"{key}.test_images", "must be at least 1")
    if not 0 < cfg.monitoring.capture_sampling_percentage <= 100:
        fail("monitoring.capture_sampling_percentage", "must be in 1..100")
    m = cfg.monitoring
    if not 0 < m.drift_threshold <= 1:
        fail("monitoring.drift_threshold", f"must be in (0, 1], got {m.drift_threshold}")
    if not 0.5 <= m.drift_confidence < 1:
        fail("monitoring.drift_confidence", f"must be in [0.5, 1), got {m.drift_confidence}")
    if not 0 <= m.accuracy_tolerance < 1:
        fail("monitoring.accuracy_tolerance", f"must be in [0, 1), got {m.accuracy_tolerance}")
    for key in ("min_records", "min_labels", "alarm_violations"):
        if getattr(m, key) < 1:
            fail(f"monitoring.{key}", "must be at least 1")
    if m.retrain_cooldown_hours < 0:
        fail("monitoring.retrain_cooldown_hours", "must not be negative")
    if cfg.env == "aws":
        if cfg.aws.role_arn and not cfg.aws.role_arn.startswith("arn:"):
            fail("aws.role_arn", f"must be an IAM role ARN, got {cfg.aws.role_arn!r}")
        if cfg.data.input_url and not cfg.data.input_url.startswith("s3://"):
            fail("data.input_url", f"must be an s3:// URL in the aws environment, "
                                   f"got {cfg.data.input_url!r}")
        missing = [f"{key} is required ({why})" for key, why in AWS_SETTINGS.items()
                   if key in aws_needs and not _dotted_value(cfg, key)]
        if missing:  # all at once: one round of editing, not one per setting
            raise ConfigError(f"{config_dir / 'aws.yaml'}: {'; '.join(missing)} in the aws "
                              "environment for this command; set it there or with "
                              "--set KEY=VALUE")
    elif not cfg.aws.bucket:
        fail("aws.bucket", "must name the (local) bucket")
