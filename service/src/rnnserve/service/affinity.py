"""Which CPUs a server process's threads run on: `cpu_affinity` (`--cpu-affinity`).

A step crosses three threads of the process on its way in (grpc's event engine reads it,
grpc.aio's poller hands it to the event loop, which answers it). Where they sit on
different cores, each hand-off wakes another core. Pinned to one core, the hand-offs are
switches on a core whose caches hold them: at one client that took a fifth off the server's
side of a step (docs/performance.md, fifteenth pass).

Pinned: every thread the process has when it pins (the main thread, which runs the event
loop, and grpc's), and the threads they start later. Released to all the setting's CPUs:
the threads that run work off the loop (`releaser`: the compute threads, which also load
the models, so that ONNX Runtime's own pools start there; the loop's default executor).

Values: "none" (nothing pinned), "auto" (the CPUs this process may run on, its affinity as
a container's cpuset limits it), or a list such as "0", "2-5" or "0,2,4-6". A lone server
runs on the first CPU of the list, worker i on the i-th (around again past its end): two
lone servers on one machine need a list each, or they share a core.

`usable_cpus` says how many CPUs' worth of time a process may use: the CPUs it may run on, or
fewer where its control group's CPU quota (a container's CPU limit) allows less.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

NONE, AUTO = "none", "auto"


def parse(value: str) -> str:
    """`value` checked, as `cpus` reads it: "none", or its CPUs listed one by one ("auto"
    read now, before anything is pinned). ValueError names the problem."""
    value = value.strip().lower() or NONE  # RNNSERVE_CPU_AFFINITY= in a compose file
    if value == NONE:
        return value
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("threads can be pinned on Linux only; use none")
    may = sorted(os.sched_getaffinity(0))
    listed = may if value == AUTO else _listed(value)
    outside = sorted(set(listed) - set(may))
    if outside:
        names = ",".join(map(str, may))
        raise ValueError(f"CPU {outside[0]} is not one this process may run on ({names})")
    return ",".join(map(str, listed))


def cpus(value: str) -> list[int] | None:
    """The CPUs of a parsed setting, in order; None for "none"."""
    return None if value == NONE else [int(cpu) for cpu in value.split(",")]


def pin(value: str, index: int = 0) -> int | None:
    """Pins every thread of this process to the CPU the `index`-th process of the setting
    runs on (None, and nothing pinned, for "none"); the threads they start inherit it."""
    listed = cpus(value)
    if listed is None:
        return None
    cpu = listed[index % len(listed)]
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended since
            os.sched_setaffinity(int(thread), {cpu})
    return cpu


def releaser(value: str) -> Callable[[], None] | None:
    """An executor's thread initializer that runs the thread on all the setting's CPUs
    (None for "none": nothing was pinned)."""
    listed = cpus(value)
    if listed is None:
        return None
    everywhere = set(listed)

    def release() -> None:
        os.sched_setaffinity(0, everywhere)

    return release


def usable_cpus(
    cgroups: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")
) -> float:
    """The CPUs this process may run on, or its control group's CPU quota where lower."""
    quotas = [quota for folder, v2 in _cpu_groups(cgroups, own) for quota in _quota(folder, v2)]
    return min([float(len(os.sched_getaffinity(0))), *quotas])


def whole_cpus() -> int:
    """`usable_cpus` in whole CPUs, at least one: how many processes `--workers auto` starts,
    each able to keep a CPU busy without the quota throttling them together."""
    return max(1, int(usable_cpus()))


def _cpu_groups(cgroups: Path, own: Path) -> Iterator[tuple[Path, bool]]:
    """The folders of this process's CPU control group (v2 or not): at its own path, where the
    host sees it, and at the root, where a container in its own cgroup namespace sees it."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers and "cpu" not in controllers.split(","):
            continue
        root = cgroups / controllers if controllers else cgroups
        for folder in {root, root / path.lstrip("/")}:
            yield folder, not controllers


def _quota(folder: Path, v2: bool) -> list[float]:
    """The folder's CPU quota in CPUs ([] where it sets none): cgroup v2's cpu.max
    ("200000 100000", or "max 100000" for none), v1's cpu.cfs_quota_us (-1 for none) over
    cpu.cfs_period_us."""
    try:
        if v2:
            quota, period = (folder / "cpu.max").read_text().split()
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        return [] if quota in ("max", "-1") else [int(quota) / int(period)]
    except (OSError, ValueError):  # no such controller here, or a file we cannot read
        return []


def _listed(value: str) -> list[int]:
    """The CPUs of a list such as "0,2,4-6", in its order, each once."""
    listed: list[int] = []
    for part in value.split(","):
        first, dash, last = part.strip().partition("-")
        if not (first.isdigit() and (not dash or last.isdigit())):
            raise ValueError(f"{part.strip()!r} is not a CPU or a range of CPUs (such as 2-5)")
        span = range(int(first), int(last if dash else first) + 1)
        if not span:
            raise ValueError(f"{part.strip()!r}: a range runs from the lower CPU to the higher")
        listed += [cpu for cpu in span if cpu not in listed]
    return listed
