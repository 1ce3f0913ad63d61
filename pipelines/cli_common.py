"""Pieces every `scones` subcommand shares: the common options, tables, progress.

Each command module has `register(subparsers)`; every leaf parser it adds takes
`parents=[common_options()]` and sets `func=handler`, where
`handler(args, config) -> int` (the exit code). pipelines/cli.py loads the config once
and turns SconesError/ConfigError into one `error: ...` line.
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterable, Sequence


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


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def progress_bar(done: int, total: int, width: int = 30, label: str = "") -> None:
    """Redraw a one-line progress bar on stderr (stdout stays clean for --json)."""
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r{label}[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
