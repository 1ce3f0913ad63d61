"""The record of local pipeline executions, in the workspace's registry.sqlite.

One row per execution (id, start/end, status, parameters, failure reason, the definition it
runs, and its owner: the runner's process and a heartbeat) and one per step (type, status,
start, seconds, log path, failure reason, its properties, cache key and cache hit), written
as they happen so that a run that is interrupted still shows how far it got.

A runner that is killed (SIGKILL, a crash of the machine) cannot record its end. Whoever
reads the executions next (`pipeline executions`, `run`, `retry`) finds it: a row that says
Executing whose owner process is gone (its pid no longer runs the same process - the start
time tells a reused pid apart) or whose heartbeat is older than the lease is marked Failed,
with the reason.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from scones.errors import SconesError
from scones.local.pipeline_runner.container import now, remove_input_copies
from scones.processes import pid_runs, process_start_time
from scones.workspace import Workspace

# The runner refreshes its heartbeat this often; a run whose owner cannot be checked by its
# pid (another host, no /proc) is dead once its heartbeat is older than the lease.
HEARTBEAT_S = 5.0
LEASE_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_executions (
    execution_id TEXT PRIMARY KEY,
    execution_arn TEXT NOT NULL,
    pipeline_name TEXT NOT NULL,
    status TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT,
    parameters TEXT NOT NULL,
    failure_reason TEXT
);
CREATE TABLE IF NOT EXISTS pipeline_execution_steps (
    execution_id TEXT NOT NULL REFERENCES pipeline_executions(execution_id),
    step_name TEXT NOT NULL,
    step_type TEXT NOT NULL,
    status TEXT NOT NULL,
    start_time TEXT NOT NULL,
    seconds REAL,
    log_path TEXT,
    failure_reason TEXT,
    PRIMARY KEY (execution_id, step_name)
);
"""
# Columns added since the first schema: added in place to an existing workspace's tables.
_ADDED_COLUMNS = {
    "pipeline_executions": {"definition": "TEXT", "owner_pid": "INTEGER",
                            "owner_started": "TEXT", "owner_host": "TEXT",
                            "heartbeat": "TEXT"},
    "pipeline_execution_steps": {"end_time": "TEXT", "properties": "TEXT",
                                 "cache_key": "TEXT", "cache_source_arn": "TEXT"},
}


class ExecutionNotFoundError(SconesError):
    """No execution with that id in this workspace."""


class ExecutionStore:
    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.path = workspace.database_file
        with closing(self._connect()) as db:
            db.executescript(_SCHEMA)
            for table, columns in _ADDED_COLUMNS.items():
                present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
                for column, kind in columns.items():
                    if column not in present:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _connect(self) -> sqlite3.Connection:
        return self.workspace.connect()

    def _write(self, sql: str, args: tuple) -> int:
        with closing(self._connect()) as db:
            return db.execute(sql, args).rowcount  # autocommit: one transaction per statement

    # -- an execution's life ------------------------------------------------------------
    def start(self, execution_id: str, arn: str, pipeline_name: str, started: str,
              parameters: dict, definition: dict | None = None) -> None:
        pid = os.getpid()
        self._write("INSERT INTO pipeline_executions (execution_id, execution_arn, "
                    "pipeline_name, status, start_time, parameters, definition, owner_pid, "
                    "owner_started, owner_host, heartbeat) "
                    "VALUES (?, ?, ?, 'Executing', ?, ?, ?, ?, ?, ?, ?)",
                    (execution_id, arn, pipeline_name, started,
                     json.dumps(parameters, default=str),
                     json.dumps(definition) if definition is not None else None,
                     pid, process_start_time(pid), socket.gethostname(), now()))

    def restart(self, execution_id: str) -> None:
        """A retry: the same execution is Executing again, owned by this process."""
        pid = os.getpid()
        self._write("UPDATE pipeline_executions SET status = 'Executing', end_time = NULL, "
                    "failure_reason = NULL, owner_pid = ?, owner_started = ?, owner_host = ?, "
                    "heartbeat = ? WHERE execution_id = ?",
                    (pid, process_start_time(pid), socket.gethostname(), now(), execution_id))

    def heartbeat(self, execution_id: str) -> None:
        self._write("UPDATE pipeline_executions SET heartbeat = ? WHERE execution_id = ?",
                    (now(), execution_id))

    def finish(self, execution_id: str, status: str, failure_reason: str | None) -> None:
        self._write("UPDATE pipeline_executions SET status = ?, end_time = ?, failure_reason = ? "
                    "WHERE execution_id = ?", (status, now(), failure_reason, execution_id))

    def step_started(self, execution_id: str, name: str, step_type: str,
                     log_path: str | None) -> None:
        self._write("INSERT OR REPLACE INTO pipeline_execution_steps (execution_id, step_name, "
                    "step_type, status, start_time, log_path) VALUES (?, ?, ?, 'Executing', ?, ?)",
                    (execution_id, name, step_type, now(),
                     self.workspace.relative(log_path) if log_path else None))

    def step_finished(self, execution_id: str, name: str, status: str, seconds: float,
                      failure_reason: str | None, properties: dict | None = None,
                      cache_key: str | None = None,
                      cache_source_arn: str | None = None) -> None:
        self._write("UPDATE pipeline_execution_steps SET status = ?, seconds = ?, "
                    "failure_reason = ?, end_time = ?, properties = ?, cache_key = ?, "
                    "cache_source_arn = ?, log_path = CASE WHEN ? IS NULL THEN log_path END "
                    "WHERE execution_id = ? AND step_name = ?",
                    (status, seconds, failure_reason, now(),
                     json.dumps(properties, default=str) if properties is not None else None,
                     cache_key, cache_source_arn, cache_source_arn, execution_id, name))

    # -- reading ------------------------------------------------------------------------
    def get(self, execution_id: str) -> dict:
        """One execution with its definition and each step's stored properties."""
        self.mark_dead_runs()
        with closing(self._connect()) as db:
            row = self._execution_row(db, execution_id)
            steps = db.execute("SELECT * FROM pipeline_execution_steps WHERE execution_id = ? "
                               "ORDER BY start_time", (execution_id,)).fetchall()
        execution = _execution(row, [self._step(s) for s in steps])
        execution["Definition"] = json.loads(row["definition"]) if row["definition"] else None
        for step, stored in zip(execution["Steps"], steps):
            step["Properties"] = json.loads(stored["properties"]) if stored["properties"] \
                else None
        return execution

    def list(self, limit: int | None = None) -> list[dict]:
        self.mark_dead_runs()
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM pipeline_executions ORDER BY start_time DESC"
                              + (" LIMIT ?" if limit else ""),
                              (limit,) if limit else ()).fetchall()
            steps = db.execute("SELECT * FROM pipeline_execution_steps "
                               "ORDER BY start_time").fetchall()
        by_execution: dict[str, list[dict]] = {}
        for step in steps:
            by_execution.setdefault(step["execution_id"], []).append(self._step(step))
        return [_execution(row, by_execution.get(row["execution_id"], [])) for row in rows]

    def _step(self, step: sqlite3.Row) -> dict:
        return {
            "Name": step["step_name"], "Type": step["step_type"], "Status": step["status"],
            "StartTime": step["start_time"], "Seconds": step["seconds"],
            "LogPath": (str(self.workspace.resolve(step["log_path"]))
                        if step["log_path"] else None),
            "FailureReason": step["failure_reason"],
            "CacheHitResult": ({"SourcePipelineExecutionArn": step["cache_source_arn"]}
                               if step["cache_source_arn"] else None)}

    def find_cached(self, pipeline_name: str, step_name: str, cache_key: str,
                    max_age: timedelta) -> list[dict]:
        """Succeeded runs of the step with this cache key within max_age, newest first:
        [{"ExecutionArn", "Properties", "CacheSourceArn"}]."""
        oldest = (datetime.now(timezone.utc) - max_age).isoformat(timespec="milliseconds")
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT e.execution_arn, s.properties, s.cache_source_arn "
                "FROM pipeline_execution_steps s JOIN pipeline_executions e "
                "ON s.execution_id = e.execution_id WHERE e.pipeline_name = ? "
                "AND s.step_name = ? AND s.cache_key = ? AND s.status = 'Succeeded' "
                "AND s.properties IS NOT NULL AND s.end_time >= ? ORDER BY s.end_time DESC",
                (pipeline_name, step_name, cache_key, oldest)).fetchall()
        return [{"ExecutionArn": r["execution_arn"], "Properties": json.loads(r["properties"]),
                 "CacheSourceArn": r["cache_source_arn"]} for r in rows]

    def stop(self, execution_id: str) -> bool:
        """StopPipelineExecution: SIGTERM to the runner process of an Executing run on this
        host, which records it Stopped exactly as after Ctrl-C (its `finally` blocks run).
        False when it is not running (or runs elsewhere: nothing to signal here)."""
        self.mark_dead_runs()
        with closing(self._connect()) as db:
            row = self._execution_row(db, execution_id)
        if row["status"] != "Executing" or row["owner_host"] != socket.gethostname() \
                or not self._owner_alive(row):
            return False
        try:
            os.kill(row["owner_pid"], signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def _execution_row(self, db: sqlite3.Connection, execution_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM pipeline_executions WHERE execution_id = ?",
                         (execution_id,)).fetchone()
        if row is None:
            raise ExecutionNotFoundError(
                f"no pipeline execution {execution_id!r} in {self.path} (list them: "
                "scones pipeline executions)")
        return row

    # -- runs whose runner died -----------------------------------------------------------
    def mark_dead_runs(self) -> list[str]:
        """Mark Failed every Executing run whose runner is gone; returns their ids."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM pipeline_executions "
                              "WHERE status IN ('Executing', 'Stopping')").fetchall()
        dead = []
        for row in rows:
            if self._owner_alive(row):
                continue
            with closing(self._connect()) as db:
                step = db.execute("SELECT step_name, log_path FROM pipeline_execution_steps "
                                  "WHERE execution_id = ? AND status = 'Executing' "
                                  "ORDER BY start_time DESC", (row["execution_id"],)).fetchone()
            where = f"at step {step['step_name']}" if step else "between steps"
            owner = (f"runner process {row['owner_pid']}" if row["owner_pid"]
                     else "its runner process (not recorded)")
            reason = (f"{owner} ended without finishing (killed?) {where}; last heartbeat "
                      f"{row['heartbeat'] or 'never'} (retry it: scones pipeline retry "
                      f"{row['execution_id']})")
            if self._write("UPDATE pipeline_executions SET status = 'Failed', end_time = ?, "
                           "failure_reason = ? WHERE execution_id = ? AND status IN "
                           "('Executing', 'Stopping')", (now(), reason, row["execution_id"])):
                self._write("UPDATE pipeline_execution_steps SET status = 'Failed', "
                            "failure_reason = ? WHERE execution_id = ? AND status = "
                            "'Executing'", (reason, row["execution_id"]))
                if step and step["log_path"]:
                    remove_input_copies(self.workspace.resolve(step["log_path"]).parent)
                dead.append(row["execution_id"])
        return dead

    @staticmethod
    def _owner_alive(row: sqlite3.Row) -> bool:
        pid, started, host = row["owner_pid"], row["owner_started"], row["owner_host"]
        if pid is None:
            return False  # recorded before owners were: nothing can still be running it
        heartbeat_fresh = False
        if row["heartbeat"]:
            age = datetime.now(timezone.utc) - datetime.fromisoformat(row["heartbeat"])
            heartbeat_fresh = age.total_seconds() < LEASE_S
        if host != socket.gethostname():
            return heartbeat_fresh
        if started is not None and process_start_time(pid) is not None:
            return process_start_time(pid) == started
        if started is not None and Path("/proc/self/stat").exists():
            return False  # /proc works here, and the pid is gone
        return pid_runs(pid) and heartbeat_fresh


def _execution(row: sqlite3.Row, steps: list[dict]) -> dict[str, Any]:
    return {
        "ExecutionId": row["execution_id"], "ExecutionArn": row["execution_arn"],
        "PipelineName": row["pipeline_name"], "Status": row["status"],
        "StartTime": row["start_time"], "EndTime": row["end_time"],
        "Parameters": json.loads(row["parameters"]), "FailureReason": row["failure_reason"],
        "Steps": steps,
    }
