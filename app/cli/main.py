"""`scones`: one CLI over the project's library functions.

Each command group is a module of app/cli/ with `register(subparsers)` (COMMAND_MODULES). This file only parses, loads the configuration once, and turns
user-facing errors into one line on stderr with a non-zero exit code.
"""
from __future__ import annotations

import argparse
import difflib
import sys

import yaml

import scones
from app.cli import data, demo, endpoint, infra, monitor, pipeline, registry, ui, workflow
from app.cli.common import configure_logging, run_guarded
from scones.config import load_config
from scones.errors import ConfigError

# Every command group, imported directly: a module that fails to import is an error, never
# a command that silently vanishes.
COMMAND_MODULES = (
    pipeline,   # scones pipeline definition|run|executions
    registry,   # scones registry list|show|approve|reject
    workflow,   # scones workflow definition|deploy|run, scones lambdas build
    endpoint,   # scones endpoint deploy|status|serve
    monitor,    # scones monitor report
    data,       # scones data snapshot|list
    infra,      # scones infra template|package|deploy
    demo,       # scones demo
    ui,         # scones ui (the local Studio)
)


# What each command needs of the aws environment's settings (scones.config.AWS_SETTINGS);
# a command not listed needs none of them (e.g. `registry list`: only credentials).
# Missing ones are reported together, before anything is done.
AWS_NEEDS = {
    # no data.input_url: the newest data snapshot in the bucket is the default input
    ("pipeline", "definition"): ("aws.role_arn", "aws.bucket"),
    ("pipeline", "run"): ("aws.role_arn", "aws.bucket"),
    ("data", "snapshot"): ("aws.bucket",),
    ("data", "list"): ("aws.bucket",),
    ("endpoint", "deploy"): ("aws.role_arn", "aws.bucket"),
    ("workflow", "run"): ("aws.bucket",),
    ("workflow", "deploy"): ("aws.bucket",),  # where the stack's bundle is uploaded
    ("infra", "deploy"): ("aws.bucket",),
    ("monitor", "report"): ("aws.bucket",),
}


def command_path(args) -> tuple[str, ...]:
    """('registry', 'list') for `scones registry list ...`."""
    path = (args.command,)
    sub = getattr(args, f"{args.command}_command", None)
    return path + ((sub,) if sub else ())


class VersionAction(argparse.Action):
    """--version: the installed version, looked up only when asked for (importlib.metadata
    is a tenth of a second of every command's start-up otherwise)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show program's version number and exit"):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {scones.__version__}")  # stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scones",
        description="Scones Unlimited delivery-vehicle classifier: model build, approval, "
                    "inference workflow and monitoring, locally or on AWS.")
    parser.add_argument("--version", action=VersionAction)
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
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}); "
                              f"quote it to mean a string: --set '{key.strip()}=\"{value}\"'"
                              ) from None
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
    loaded = []

    def body() -> int:
        config = load_config(getattr(args, "env", "local"),
                             overrides=parse_overrides(getattr(args, "overrides", [])),
                             extra_files=tuple(getattr(args, "config", [])),
                             aws_needs=AWS_NEEDS.get(command_path(args), ()))
        loaded.append(config)
        return args.func(args, config)

    # The config, once loaded, lets AWS errors name the region and role in use.
    return run_guarded(body, config=_LazyConfig(loaded))


class _LazyConfig:
    """The config body() loaded, if it got that far (None's attributes otherwise)."""

    def __init__(self, loaded: list):
        self._loaded = loaded

    def __getattr__(self, name: str):
        return getattr(self._loaded[0], name) if self._loaded else None


if __name__ == "__main__":
    sys.exit(main())
