"""`scones`: one CLI over the project's library functions.

Each command group is a module of scones/cli/ with `register(subparsers)` (COMMAND_MODULES). This file only parses, loads the configuration once, and turns
user-facing errors into one line on stderr with a non-zero exit code.
"""
from __future__ import annotations

import argparse
import difflib
import sys

import yaml

from scones import __version__
from scones.cli import demo, endpoint, infra, monitor, pipeline, registry, workflow
from scones.cli.common import configure_logging
from scones.config import load_config
from scones.errors import ConfigError, SconesError

# Every command group, imported directly: a module that fails to import is an error, never
# a command that silently vanishes.
COMMAND_MODULES = (
    pipeline,   # scones pipeline definition|run|executions
    registry,   # scones registry list|show|approve|reject
    workflow,   # scones workflow definition|deploy|run, scones lambdas build
    endpoint,   # scones endpoint deploy|status|serve
    monitor,    # scones monitor report
    infra,      # scones infra template
    demo,       # scones demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scones",
        description="Scones Unlimited delivery-vehicle classifier: model build, approval, "
                    "inference workflow and monitoring, locally or on AWS.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
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


def _leaf_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The parser of the subcommand that was named (e.g. `scones pipeline run`)."""
    while parser._subparsers is not None:
        action = next(a for a in parser._subparsers._group_actions
                      if isinstance(a, argparse._SubParsersAction))
        chosen = getattr(args, action.dest, None)
        if chosen not in action.choices:
            break
        parser = action.choices[chosen]
    return parser


def _unrecognized(parser: argparse.ArgumentParser, args, unknown: list[str]) -> None:
    """A mistyped flag is reported by the subcommand it was given to, with a suggestion."""
    leaf = _leaf_parser(parser, args)
    options = [o for a in leaf._actions for o in a.option_strings]
    hints = []
    for item in unknown:
        flag = item.split("=", 1)[0]
        close = difflib.get_close_matches(flag, options, n=1) if flag.startswith("-") else []
        if close:
            hints.append(f"{flag}: did you mean {close[0]}?")
    leaf.error(f"unrecognized arguments: {' '.join(unknown)}"
               + (f" ({'; '.join(hints)})" if hints else ""))


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unrecognized(parser, args, unknown)
    try:
        config = load_config(getattr(args, "env", "local"),
                             overrides=parse_overrides(getattr(args, "overrides", [])),
                             extra_files=tuple(getattr(args, "config", [])))
        return int(args.func(args, config) or 0)
    except SconesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
