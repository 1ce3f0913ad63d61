"""The record of local pipeline executions, in the workspace's registry.sqlite.

One row per execution (id, start/end, status, parameters, failure reason) and one per step
(type, status, start, seconds, log path, failure reason), written as they happen so that a
run that is interrupted still shows how far it got.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from typing import Any

from scones.workspace import Workspace

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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ExecutionStore:
    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.path = workspace.database_file
        with closing(self._connect()) as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return self.workspace.connect()

    def _write(self, sql: str, args: tuple) -> None:
        with closing(self._connect()) as db:
            db.execute(sql, args)  # autocommit: each statement is its own transaction

    def start(self, execution_id: str, arn: str, pipeline_name: str, started: str,
              parameters: dict) -> None:
        self._write("INSERT INTO pipeline_executions (execution_id, execution_arn, "
                    "pipeline_name, status, start_time, parameters) "
                    "VALUES (?, ?, ?, 'Executing', ?, ?)",
                    (execution_id, arn, pipeline_name, started,
                     json.dumps(parameters, default=str)))

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
                      failure_reason: str | None) -> None:
        self._write("UPDATE pipeline_execution_steps SET status = ?, seconds = ?, "
                    "failure_reason = ? WHERE execution_id = ? AND step_name = ?",
                    (status, seconds, failure_reason, execution_id, name))

    def list(self, limit: int | None = None) -> list[dict]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM pipeline_executions ORDER BY start_time DESC"
                              + (" LIMIT ?" if limit else ""),
                              (limit,) if limit else ()).fetchall()
            steps = db.execute("SELECT * FROM pipeline_execution_steps "
                               "ORDER BY start_time").fetchall()
        by_execution: dict[str, list[dict]] = {}
        for step in steps:
            by_execution.setdefault(step["execution_id"], []).append({
                "Name": step["step_name"], "Type": step["step_type"], "Status": step["status"],
                "StartTime": step["start_time"], "Seconds": step["seconds"],
                "LogPath": (str(self.workspace.resolve(step["log_path"]))
                            if step["log_path"] else None),
                "FailureReason": step["failure_reason"]})
        return [_execution(row, by_execution.get(row["execution_id"], [])) for row in rows]


def _execution(row: sqlite3.Row, steps: list[dict]) -> dict[str, Any]:
    return {
        "ExecutionId": row["execution_id"], "ExecutionArn": row["execution_arn"],
        "PipelineName": row["pipeline_name"], "Status": row["status"],
        "StartTime": row["start_time"], "EndTime": row["end_time"],
        "Parameters": json.loads(row["parameters"]), "FailureReason": row["failure_reason"],
        "Steps": steps,
    }

