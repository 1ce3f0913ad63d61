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

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from scones.errors import SconesError

REGISTRY_FILE = "registry.sqlite"
# SQLite waits this long for a lock held by another process before giving up (WAL mode:
# only writers wait, and only for one another). SCONES_SQLITE_BUSY_TIMEOUT_S overrides it.
BUSY_TIMEOUT_S = 30.0
SQLITE_HEADER = b"SQLite format 3\x00"
# Databases this process has integrity-checked (PRAGMA quick_check): once per process each.
_CHECKED: set[Path] = set()
_CHECKED_LOCK = threading.Lock()


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

    def monitoring_dir(self, endpoint_name: str) -> Path:
        """The monitor's files of one endpoint (its position, predictions, metrics...)."""
        return self.root / "monitoring" / endpoint_name

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
        themselves, so a write lock is taken up front rather than on first write.

        WAL mode (readers never wait for a writer) and a busy timeout for ordinary
        contention. Every failure is a WorkspaceError saying what to do: a lock held past
        the timeout (RegistryLockedError, naming the holder's pid), a damaged file
        (RegistryCorruptError; checked on first use in each process), a registry emptied
        while an endpoint still serves from it, a read-only workspace."""
        path = self.database_file
        self._refuse_emptied_registry()
        _check_header(path)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=_busy_timeout_s(), isolation_level=None,
                                 factory=_RegistryConnection, check_same_thread=True)
        except (OSError, sqlite3.Error) as exc:
            raise _translate(exc, path) from None
        db.registry_path = path
        db.row_factory = sqlite3.Row
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            _quick_check_once(db, path)
        except BaseException:
            db.close()
            raise
        return db

    def _refuse_emptied_registry(self) -> None:
        """A registry truncated to 0 bytes reads as a fresh, empty one; while an endpoint
        still serves a version from it, that is data loss to report, not to paper over."""
        try:
            if self.database_file.stat().st_size != 0:
                return
        except FileNotFoundError:
            return
        for state_file in sorted(self.endpoints_dir.glob("*.json")):
            try:
                version = json.loads(state_file.read_text()).get("ModelPackageVersion")
            except (OSError, ValueError, AttributeError):
                version = None
            raise RegistryEmptiedError(
                f"the registry {self.database_file} is empty (0 bytes), but endpoint "
                f"{state_file.stem} still serves model version {version or '?'} "
                f"({state_file}): the registry was truncated or replaced. Restore it from a "
                f"backup; to start afresh instead, move {state_file} and the empty registry "
                "aside")


class WorkspaceError(SconesError):
    """The workspace folder or its database cannot be used as it is."""


class RegistryLockedError(WorkspaceError):
    """Another process held the registry's write lock for longer than the busy timeout."""


class RegistryCorruptError(WorkspaceError):
    """registry.sqlite is not a (readable) SQLite database."""


class RegistryEmptiedError(WorkspaceError):
    """registry.sqlite is empty while an endpoint state file says a version is served."""


def _busy_timeout_s() -> float:
    try:
        return float(os.environ.get("SCONES_SQLITE_BUSY_TIMEOUT_S", BUSY_TIMEOUT_S))
    except ValueError:
        return BUSY_TIMEOUT_S


def _check_header(path: Path) -> None:
    """The cheap check on every open: a non-empty file must start with SQLite's header."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _translate(exc, path) from None
    if header and header != SQLITE_HEADER:
        raise _corrupt(path, "file is not a database: it does not start with SQLite's header")


def _quick_check_once(db: sqlite3.Connection, path: Path) -> None:
    key = path.resolve()
    with _CHECKED_LOCK:
        if key in _CHECKED:
            return
    rows = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    if rows != ["ok"]:
        raise _corrupt(path, f"integrity check failed: {'; '.join(map(str, rows[:3]))}")
    with _CHECKED_LOCK:
        _CHECKED.add(key)


def _corrupt(path: Path, what: str) -> RegistryCorruptError:
    return RegistryCorruptError(
        f"the registry {path} is damaged ({what}). Restore it from a backup, or move it "
        f"aside (`mv {path} {path}.broken`) and scones starts a new, empty registry "
        "(registered versions and execution records are then gone; model files in the "
        "workspace stay)")


def _lock_holders(path: Path) -> list[int]:
    """Pids of other processes holding POSIX locks on the database or its WAL index
    (Linux /proc/locks); [] where that cannot be known."""
    inodes = set()
    for candidate in (path, path.with_name(path.name + "-shm"), path.with_name(path.name + "-wal")):
        try:
            inodes.add(candidate.stat().st_ino)
        except OSError:
            pass
    pids: set[int] = set()
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) < 6 or "->" in fields:
                    continue  # a waiter, not a holder
                try:
                    pid, inode = int(fields[4]), int(fields[5].split(":")[-1])
                except ValueError:
                    continue
                if inode in inodes and pid != os.getpid():
                    pids.add(pid)
    except OSError:
        return []
    return sorted(pids)


def _translate(exc: BaseException, path: Path) -> WorkspaceError:
    message = str(exc)
    lower = message.lower()
    if isinstance(exc, sqlite3.Error) and ("locked" in lower or "busy" in lower):
        holders = _lock_holders(path)
        who = (f" (pid {', '.join(map(str, holders))})" if holders else "")
        return RegistryLockedError(
            f"the registry at {path} is locked by another process{who} for more than "
            f"{_busy_timeout_s():g} s; try again when it finishes")
    if "malformed" in lower or "not a database" in lower or "corrupt" in lower:
        return _corrupt(path, message)
    if "readonly" in lower or "read-only" in lower or getattr(exc, "errno", None) in (13, 30) \
            or "unable to open" in lower:
        return WorkspaceError(
            f"cannot write the registry {path} ({message}): the workspace {path.parent} is "
            "read-only or not yours; make it writable, or point --set local.workspace=DIR at "
            "a writable folder")
    if "disk is full" in lower or "disk i/o" in lower or getattr(exc, "errno", None) == 28:
        return WorkspaceError(f"cannot write the registry {path} ({message}): free some disk "
                              "space and try again")
    return WorkspaceError(f"the registry {path} cannot be used: {message}")


class _TranslatingCursor(sqlite3.Cursor):
    def _call(self, method, *args):
        try:
            return method(*args)
        except sqlite3.IntegrityError:
            raise  # a constraint the caller handles (e.g. a concurrent registration)
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, self.connection.registry_path) from None

    def execute(self, *args):
        return self._call(super().execute, *args)

    def executemany(self, *args):
        return self._call(super().executemany, *args)

    def executescript(self, *args):
        return self._call(super().executescript, *args)

    def fetchone(self):
        return self._call(super().fetchone)

    def fetchmany(self, *args):
        return self._call(super().fetchmany, *args)

    def fetchall(self):
        return self._call(super().fetchall)


class _RegistryConnection(sqlite3.Connection):
    """A connection whose SQLite errors are WorkspaceErrors naming the registry file."""

    registry_path: Path

    def cursor(self, factory=_TranslatingCursor):
        return super().cursor(factory)

    def execute(self, *args):
        return self.cursor().execute(*args)

    def executemany(self, *args):
        return self.cursor().executemany(*args)

    def executescript(self, *args):
        return self.cursor().executescript(*args)

    def commit(self):
        try:
            return super().commit()
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, self.registry_path) from None
