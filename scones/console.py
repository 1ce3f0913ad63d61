"""Console output, one way for every command: tables, progress, JSON, errors.

Tables are rendered by rich to at most 100 columns (long cells wrap, they are never cut);
progress goes to stderr, so stdout stays clean for --json and pipes.
"""
from __future__ import annotations

import io
import json
import sys
from typing import Any, Iterable, Sequence

WIDTH = 100


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
                 title: str | None = None) -> str:
    """A plain-text table no wider than WIDTH columns."""
    # lazily: rich takes a tenth of a second to import, and --json output never needs it
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", show_edge=False,
                  pad_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    buffer = io.StringIO()
    Console(file=buffer, width=WIDTH, color_system=None, highlight=False,
            emoji=False, markup=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()).strip("\n")


def print_json(value: Any) -> None:
    """One JSON document on stdout; datetimes as ISO 8601 strings."""
    print(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) else str(value)


def progress_bar(done: int, total: int, width: int = 30, label: str = "") -> None:
    """A one-line progress bar on stderr. On a terminal it is redrawn in place; in a log
    file it is a new line at each tenth, not a line per item."""
    filled = int(width * done / total) if total else width
    line = f"{label}[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{line}" + ("\n" if done >= total else ""))
    elif done in (0, total) or (total and done * 10 // total != (done - 1) * 10 // total):
        sys.stderr.write(line + "\n")
    sys.stderr.flush()

