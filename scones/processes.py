"""Processes: whether a recorded process is still the one that was recorded (the local
pipeline runner's owner checks and the background endpoint's registry both ask this), and
the deadline that makes a stopping server process end whatever its clean-up does."""
from __future__ import annotations

import faulthandler
import os
from pathlib import Path

STOP_DEADLINE_S = 20.0


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), None elsewhere or
    when there is no such process: with the pid it names one process, even after pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def pid_runs(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_if_stop_hangs(seconds: float = STOP_DEADLINE_S) -> None:
    """Arm the stop deadline of a long-running command that has begun to stop (Ctrl-C,
    SIGTERM): if its clean-up is still running `seconds` later, every thread's stack goes
    to stderr (what held it up) and the process exits 1. faulthandler's watchdog is a C
    thread that needs no GIL, so a clean-up stuck anywhere, even in C code, is ended."""
    faulthandler.dump_traceback_later(seconds, exit=True)
