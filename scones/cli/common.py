"""Pieces every `scones` subcommand shares: the common options, tables, progress.

Each command module has `register(subparsers)`; every leaf parser it adds takes
`parents=[common_options()]` and sets `func=handler`, where
`handler(args, config) -> int` (the exit code). pipelines/cli.py loads the config once
and turns SconesError/ConfigError into one `error: ...` line.
"""
from __future__ import annotations

import argparse
import logging


def configure_logging() -> None:
    """WARNING and up, on stderr. Installing the root handler first also turns the SDKs'
    own logging.basicConfig(level=INFO) calls (sagemaker does one on a lazy import) into
    no-ops, so their INFO lines stay out of our output."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def common_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("configuration")
    group.add_argument("--env", choices=("local", "aws"), default="local",
                       help="configuration environment: configs/base.yaml + configs/ENV.yaml "
                            "(default: local, the embedded default)")
    group.add_argument("--config", action="append", default=[], metavar="FILE",
                       help="extra YAML overlay, applied after the environment's")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       dest="overrides",
                       help="override one setting, e.g. --set training.epochs=5 (YAML value)")
    return parser


def command_group(subparsers, name: str, help: str):
    """The sub-subparsers of group `name` (`scones NAME ...`), created on first use, so
    several modules can add commands to one group."""
    cache = subparsers.__dict__.setdefault("_scones_groups", {})
    if name not in cache:
        parser = subparsers.add_parser(name, help=help, description=help)
        cache[name] = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND",
                                            required=True)
    return cache[name]
