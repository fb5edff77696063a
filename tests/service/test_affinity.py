"""`cpu_affinity`: each server process's threads on one CPU (worker i on the i-th of the
setting's), and the work off the event loop on all of the setting's CPUs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from processes import thread_cpus, worker_pids

from rnnserve.cli import build_parser
from rnnserve.client.client import build_request
from rnnserve.protocol.errors import UsageError
from rnnserve.service import affinity
from rnnserve.service.cli import settings_from_args
from rnnserve.service.settings import Settings

CPUS = sorted(os.sched_getaffinity(0))  # what this process may run on, as the server's
ALL = ",".join(map(str, CPUS))


def test_none_or_an_empty_value_pins_nothing() -> None:
    assert affinity.parse("none") == affinity.parse("") == "none"
    assert affinity.cpus("none") is None
    assert affinity.pin("none") is None and affinity.releaser("none") is None


def test_auto_is_the_cpus_this_process_may_run_on_read_at_once() -> None:
    assert affinity.parse(" AUTO ") == ALL
    assert affinity.cpus(ALL) == CPUS


def test_a_list_keeps_its_order_and_names_each_cpu_once() -> None:
    last = CPUS[-1]

    assert affinity.parse(f"{last},{CPUS[0]}-{last}") == ",".join(map(str, [last, *CPUS[:-1]]))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("x", "'x' is not a CPU or a range of CPUs"),
        ("0,,1", "'' is not a CPU or a range of CPUs"),
        ("-1", "'-1' is not a CPU or a range of CPUs"),
        ("3-1", "'3-1': a range runs from the lower CPU to the higher"),
        (str(CPUS[-1] + 1), f"CPU {CPUS[-1] + 1} is not one this process may run on ({ALL})"),
    ],
)
def test_a_bad_value_is_refused_naming_the_problem(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        affinity.parse(value)


def test_the_flag_names_itself_when_its_value_is_refused() -> None:
    with pytest.raises(UsageError, match=r"--cpu-affinity: .*CPU 9999 is not one"):
        settings_from_args(build_parser().parse_args(["serve", "--cpu-affinity", "9999"]))


PINNING = """
import json, os, threading
from concurrent.futures import ThreadPoolExecutor
from rnnserve.service import affinity

setting = affinity.parse("auto")
started, stop = threading.Event(), threading.Event()
earlier = threading.Thread(target=lambda: (started.set(), stop.wait()))
earlier.start(); started.wait()
cpu = affinity.pin(setting, index=1)
later = []
thread = threading.Thread(target=lambda: later.append(sorted(os.sched_getaffinity(0))))
thread.start(); thread.join()
with ThreadPoolExecutor(1, initializer=affinity.releaser(setting)) as pool:
    released = pool.submit(lambda: sorted(os.sched_getaffinity(0))).result()
print(json.dumps({
    "cpu": cpu, "main": sorted(os.sched_getaffinity(0)),
    "earlier": sorted(os.sched_getaffinity(earlier.native_id)), "later": later[0],
    "released": released,
}))
stop.set()
"""


def test_pinning_moves_every_thread_and_those_they_start_and_releasing_frees_one() -> None:
    """In a process of its own: pinning this one would slow the tests."""
    done = subprocess.run(
        [sys.executable, "-c", PINNING], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(done.stdout)

    cpu = CPUS[1 % len(CPUS)]  # the second process's
    assert seen == {
        "cpu": cpu, "main": [cpu], "earlier": [cpu], "later": [cpu], "released": CPUS,
    }  # fmt: skip


def step(server) -> None:
    request = build_request(
        "sine-lstm", {"x": np.ones((1, 1, 1), np.float32)}, ["y"],
        {"sequence_id": 5, "sequence_start": True},
    )  # fmt: skip
    server.stub.ModelInfer(request, timeout=30)


def test_a_pinned_server_runs_its_threads_on_one_cpu_and_its_compute_threads_on_all(
    start_server, tiny_repository: Path
) -> None:
    server = start_server(tiny_repository, args=["--cpu-affinity", "auto"])
    step(server)

    threads = thread_cpus(server.process.pid)
    assert threads[server.process.pid] == {CPUS[0]}  # the event loop's
    assert all(cpus in ({CPUS[0]}, set(CPUS)) for cpus in threads.values()), threads
    if len(CPUS) > 1:  # a compute thread loaded the models
        assert set(CPUS) in threads.values(), threads
    assert f"its threads on CPU {CPUS[0]}" in server.log()


def test_a_server_pins_nothing_by_default(server) -> None:
    threads = thread_cpus(server.process.pid)

    assert threads[server.process.pid] == set(CPUS)
    assert all(cpus == set(CPUS) for cpus in threads.values()), threads


@pytest.mark.slow
@pytest.mark.skipif(len(CPUS) < 2, reason="one CPU: every worker would share it")
def test_each_worker_runs_on_its_own_cpu(start_server, tiny_repository, redis_url) -> None:
    owned = ["--workers", "2", "--state-store", "owned", "--redis-url", redis_url]
    server = start_server(tiny_repository, args=[*owned, "--cpu-affinity", "auto"])
    step(server)

    workers = worker_pids(server.process.pid)
    assert sorted(min(os.sched_getaffinity(pid)) for pid in workers) == CPUS[:2]
    assert all(len(os.sched_getaffinity(pid)) == 1 for pid in workers)


def cgroup_tree(root: Path, own: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A control-group tree as /sys/fs/cgroup holds it, and the process's /proc/self/cgroup."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "self").write_text(own)
    return root, root / "self"


@pytest.mark.parametrize(
    ("own", "files", "usable"),
    [
        ("0::/\n", {"cpu.max": "max 100000\n"}, len(CPUS)),  # v2, no quota
        ("0::/\n", {"cpu.max": "50000 100000\n"}, min(len(CPUS), 0.5)),  # a container's
        ("0::/pod/c1\n", {"pod/c1/cpu.max": "150000 100000\n"}, min(len(CPUS), 1.5)),  # host's
        (
            "4:memory:/x\n1:cpu,cpuacct:/x\n0::/\n",
            {
                "cpu,cpuacct/x/cpu.cfs_quota_us": "100000",
                "cpu,cpuacct/x/cpu.cfs_period_us": "100000",
            },
            min(len(CPUS), 1.0),
        ),  # v1
        (
            "1:cpu:/\n0::/\n",
            {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
            len(CPUS),
        ),
    ],
)
def test_usable_cpus_are_those_it_may_run_on_or_its_cpu_quota_where_lower(
    tmp_path: Path, own: str, files: dict[str, str], usable: float
) -> None:
    assert affinity.usable_cpus(*cgroup_tree(tmp_path, own, files)) == usable


def test_usable_cpus_where_no_control_group_can_be_read(tmp_path: Path) -> None:
    assert affinity.usable_cpus(tmp_path, tmp_path / "absent") == len(CPUS)


@pytest.mark.parametrize(("usable", "workers"), [(16.0, 16), (2.0, 2), (2.5, 2), (0.5, 1)])
def test_auto_workers_are_one_per_whole_cpu_it_may_use_and_at_least_one(
    monkeypatch: pytest.MonkeyPatch, usable: float, workers: int
) -> None:
    """A container limited to two CPUs on a 16-core host starts two workers, not 16 that its
    quota would throttle together."""
    monkeypatch.setattr(affinity, "usable_cpus", lambda: usable)
    assert Settings(workers="auto").workers == workers  # type: ignore[arg-type]
