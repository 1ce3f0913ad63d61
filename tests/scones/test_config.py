"""The layered configuration: merge order, typing, and errors that name key and file."""
from pathlib import Path

import pytest

from app.cli.main import parse_overrides
from scones.config import CONFIG_DIR, ConfigError, load_config


def write_configs(tmp_path: Path, base: str, local: str = "", aws: str = "") -> Path:
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "base.yaml").write_text((CONFIG_DIR / "base.yaml").read_text() + base)
    (config_dir / "local.yaml").write_text((CONFIG_DIR / "local.yaml").read_text() + local)
    (config_dir / "aws.yaml").write_text(aws)
    return config_dir


def test_local_is_default_and_resolves_paths_against_the_project_root():
    config = load_config()
    assert config.env == "local"
    assert config.classes == ("bicycle", "motorcycle")
    assert config.local.workspace == CONFIG_DIR.parent / ".scones"
    assert config.data.input_url == str((CONFIG_DIR.parent.parent / "shared/datasets/"
                                         "scones-cifar100/train").resolve())
    assert isinstance(config.training.learning_rate, float)


def test_overlay_and_overrides_win_over_base(tmp_path):
    config_dir = write_configs(tmp_path, "", local="training:\n  epochs: 7\n")
    config = load_config("local", config_dir=config_dir)
    assert config.training.epochs == 7
    assert config.training.batch_size == 64  # untouched keys of the section survive
    config = load_config("local", overrides={"training.epochs": 3}, config_dir=config_dir)
    assert config.training.epochs == 3


def test_unknown_key_names_key_and_file(tmp_path):
    config_dir = write_configs(tmp_path, "", local="training:\n  epocs: 7\n")
    with pytest.raises(ConfigError, match=r"local\.yaml: unknown key 'training\.epocs'"):
        load_config("local", config_dir=config_dir)


def test_wrong_type_names_key_and_file(tmp_path):
    config_dir = write_configs(tmp_path, "", local="training:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"local\.yaml: training\.epochs must be an integer"):
        load_config("local", config_dir=config_dir)


def test_aws_requires_a_role(tmp_path):
    with pytest.raises(ConfigError, match=r"aws\.yaml: aws\.role_arn is required"):
        load_config("aws")
    config = load_config("aws", overrides={"aws.role_arn": "arn:aws:iam::1:role/r",
                                           "aws.bucket": "b", "data.input_url": "s3://b/train"})
    assert config.aws.bucket == "b" and config.env == "aws"


def test_semantic_checks_and_cli_overrides():
    with pytest.raises(ConfigError, match="pipeline.accuracy_threshold must be between 0 and 1"):
        load_config(overrides=parse_overrides(["pipeline.accuracy_threshold=1.5"]))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["training.epochs"])
    with pytest.raises(ConfigError, match="unknown environment 'prod'"):
        load_config("prod")


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_workspace_is_a_config_error_not_the_project_root(value):
    with pytest.raises(ConfigError, match=r"local\.workspace must not be empty"):
        load_config(overrides={"local.workspace": value})
