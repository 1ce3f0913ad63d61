"""`scones`: one CLI over the project's library functions.

Subcommand groups live beside the code they drive (COMMAND_MODULES); each module has
`register(subparsers)`. This file only parses, loads the configuration once, and turns
user-facing errors into one line on stderr with a non-zero exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import yaml

from scones.cli.common import configure_logging
from scones.config import ConfigError, load_config
from scones.errors import SconesError

COMMAND_MODULES = (
    "scones.cli.pipeline",   # scones pipeline definition|run|executions
    "scones.cli.registry",   # scones registry list|show|approve|reject
    "scones.cli.workflow",    # scones workflow definition|deploy, scones lambdas build
    "scones.cli.workflow_run",         # scones workflow run, scones endpoint serve
    "scones.cli.ops",         # scones endpoint deploy|status, monitor report, infra template
    "scones.cli.demo",       # scones demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scones",
        description="Scones Unlimited delivery-vehicle classifier: model build, approval, "
                    "inference workflow and monitoring, locally or on AWS.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that command group is not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. training.epochs=5")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(getattr(args, "env", "local"),
                             overrides=parse_overrides(getattr(args, "overrides", [])),
                             extra_files=tuple(getattr(args, "config", [])))
        return int(args.func(args, config) or 0)
    except (SconesError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
