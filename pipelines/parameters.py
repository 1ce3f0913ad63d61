"""Pipeline parameters checked before anything runs, by the configuration's own rules.

Each parameter of the model-build pipeline is a configuration setting that a run may
override (its default in the definition *is* that setting, pipelines/pipeline.py). A value
passed for a run is therefore held to the same rules as the setting: AccuracyThreshold in
[0, 1], Epochs at least 1, LearningRate positive, ModelApprovalStatus one of the three ... -
checked by scones.config's own validation, so the two cannot drift apart.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from scones.config import CONFIG_DIR, Config, check_semantics
from scones.errors import ConfigError, PipelineExecutionError

# parameter -> the setting that is its default (get_pipeline's ParameterX(default_value=...))
PARAMETER_SETTINGS = {
    "InputDataUrl": "data.input_url",
    "ProcessingInstanceType": "pipeline.processing_instance_type",
    "TrainingInstanceType": "pipeline.training_instance_type",
    "Epochs": "training.epochs",
    "LearningRate": "training.learning_rate",
    "AccuracyThreshold": "pipeline.accuracy_threshold",
    "ModelApprovalStatus": "pipeline.model_approval_status",
}


class PipelineParameterError(PipelineExecutionError):
    """A pipeline parameter's value is out of range or of the wrong type."""


def _typed(name: str, kind: type, value: Any) -> Any:
    text = str(value).strip()
    try:
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            return int(text)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(text)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError
            return number
    except ValueError:
        raise PipelineParameterError(
            f"--param {name}={value}: not a valid {'integer' if kind is int else 'number'}"
        ) from None
    return str(value)


def check_parameters(config: Config, parameters: Mapping[str, Any] | None) -> Config:
    """The config with the run's parameters in place of their settings; a
    PipelineParameterError naming the parameter when one breaks the setting's rules.
    Parameters that are not settings (a custom pipeline's) are left to the definition."""
    sections: dict[str, dict[str, Any]] = {}
    origin = {}
    for name, value in (parameters or {}).items():
        setting = PARAMETER_SETTINGS.get(name)
        if setting is None:
            continue
        section, key = setting.split(".")
        current = getattr(getattr(config, section), key)
        kind = type(current) if current is not None else str
        sections.setdefault(section, {})[key] = _typed(name, kind, value)
        origin[setting] = f"--param {name}"
    checked = config.replace(**{
        section: dataclasses.replace(getattr(config, section), **changes)
        for section, changes in sections.items()})
    try:
        check_semantics(checked, origin, CONFIG_DIR)
    except ConfigError as exc:
        raise PipelineParameterError(str(exc)) from None
    return checked
