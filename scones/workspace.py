"""The local workspace (`local.workspace`, default `.scones/`): the one module that knows its
layout. Everything the embedded default keeps lives under one folder:

    s3/<bucket>/<key>            the object store behind every s3:// URL
    registry.sqlite              model registry and pipeline executions
    executions/<id>/<step>/      each local pipeline step's folders and log.txt
    endpoints/<name>.json        what the local endpoint serves (written on deploy)
    reports/                     monitoring reports
    demo/                        what `scones demo` writes besides the above

Paths that are stored (in SQLite, in endpoint state files) are stored *relative* to the
workspace and resolved on read, so a workspace can be moved or copied and still works.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from scones.errors import SconesError

REGISTRY_FILE = "registry.sqlite"
# SQLite waits this long for a lock held by another process before giving up.
BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    # -- the layout ---------------------------------------------------------------------
    @property
    def object_store_dir(self) -> Path:
        return self.root / "s3"

    @property
    def database_file(self) -> Path:
        return self.root / REGISTRY_FILE

    @property
    def executions_dir(self) -> Path:
        return self.root / "executions"

    def execution_dir(self, execution_id: str) -> Path:
        return self.executions_dir / execution_id

    @property
    def endpoints_dir(self) -> Path:
        return self.root / "endpoints"

    def endpoint_state_file(self, endpoint_name: str) -> Path:
        return self.endpoints_dir / f"{endpoint_name}.json"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def demo_dir(self) -> Path:
        return self.root / "demo"

    # -- stored paths ---------------------------------------------------------------------
    def relative(self, path: Path | str) -> str:
        """How a path under the workspace is stored: relative to it (absolute if outside)."""
        path = Path(path).resolve()
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def resolve(self, stored: str | None) -> Path | None:
        """The path a stored value names today, wherever the workspace now lies."""
        if not stored:
            return None
        path = Path(stored)
        return path if path.is_absolute() else self.root / path

    # -- the database ---------------------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        """A connection to registry.sqlite. isolation_level=None: callers issue BEGIN
        themselves, so a write lock is taken up front rather than on first write."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.database_file, timeout=BUSY_TIMEOUT_S,
                                 isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise WorkspaceError(f"cannot open {self.database_file}: {exc} (check that the "
                                 f"workspace {self.root} is a writable folder)") from None
        db.row_factory = sqlite3.Row
        return db


class WorkspaceError(SconesError):
    """The workspace folder or its database cannot be used as it is."""
