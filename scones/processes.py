"""Whether a recorded process is still the one that was recorded: the local pipeline
runner's owner checks and the background endpoint's registry both ask this."""
from __future__ import annotations

import os
from pathlib import Path


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
