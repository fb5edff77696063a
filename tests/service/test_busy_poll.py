"""`busy_poll_us`: after an inference request that ran alone and ended within the window of the
one before, the event loop polls, awake, for the window, then sleeps again; on by default where
a core is to spare."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import numpy as np
import pytest
from processes import cpu_seconds

from rnnserve.cli import build_parser
from rnnserve.client.client import build_request
from rnnserve.protocol.errors import UsageError
from rnnserve.service import affinity
from rnnserve.service.busy_poll import WINDOW_US, BusyPoll
from rnnserve.service.cli import settings_from_args
from rnnserve.service.settings import Settings


def request(busy: BusyPoll, session: int | str = 7) -> None:
    """A request of `session` that ran alone, from start to end."""
    busy.begin()
    busy.end(session)


async def cpu_while_sleeping(seconds: float) -> float:
    """CPU time this thread (the event loop's) used while awaiting `seconds`."""
    before = time.thread_time()
    await asyncio.sleep(seconds)
    return time.thread_time() - before


def test_the_loop_polls_awake_for_the_window_after_requests_close_together_then_sleeps() -> None:
    async def scenario() -> tuple[float, float]:
        busy = BusyPoll(window_us=300_000)

        request(busy)
        request(busy)  # within the window of the one before
        assert busy.polling
        awake = await cpu_while_sleeping(0.1)  # within the window: the loop turns, polling
        assert busy.polling
        await asyncio.sleep(0.25)  # past it
        assert not busy.polling
        return awake, await cpu_while_sleeping(0.1)

    awake, asleep = asyncio.run(scenario())

    assert awake > 0.02, awake  # a fifth of the core at least, on a loaded machine
    assert asleep < 0.02, asleep


def test_a_lone_request_or_one_after_a_quiet_spell_leaves_the_loop_asleep() -> None:
    """A client stepping slower than the window would find the loop asleep anyway: polling
    for it would spend a core for nothing."""

    async def scenario() -> None:
        busy = BusyPoll(window_us=50_000)

        request(busy)  # the first
        assert not busy.polling
        await asyncio.sleep(0.08)
        request(busy)  # after longer than the window

        assert not busy.polling

    asyncio.run(scenario())


def test_requests_running_together_stop_polling_until_one_runs_alone_again() -> None:
    """Clients in flight together keep the loop busy without polling; between their bursts
    its core is better left to grpc's threads, which read the next requests."""

    async def scenario() -> None:
        busy = BusyPoll(window_us=300_000)
        request(busy)
        request(busy)
        assert busy.polling

        busy.begin()
        busy.begin()  # beside the first
        await asyncio.sleep(0)  # the loop's next turn
        assert not busy.polling
        busy.end(7)
        busy.end(7)
        assert not busy.polling  # neither ran alone

        request(busy)  # alone again, soon after

        assert busy.polling

    asyncio.run(scenario())


def test_requests_of_other_sessions_in_between_mean_other_clients_and_stop_polling() -> None:
    """Clients stepping sessions of their own, one request each at a time, take turns on the
    loop: each request runs alone, but the next is another client's."""

    async def scenario() -> None:
        busy = BusyPoll(window_us=300_000)
        request(busy, 1)
        request(busy, 1)
        assert busy.polling

        for session in (2, 3, 1, 2, 3):
            request(busy, session)
        await asyncio.sleep(0)  # the loop's next turn
        assert not busy.polling

        request(busy, 3)  # the same session's again: a client alone

        assert busy.polling

    asyncio.run(scenario())


def test_each_request_extends_the_window_from_its_end() -> None:
    async def scenario() -> None:
        busy = BusyPoll(window_us=100_000)

        for _ in range(4):  # 0.24 s in all, longer than the window
            request(busy)
            await asyncio.sleep(0.06)
        assert busy.polling
        await asyncio.sleep(0.15)

        assert not busy.polling

    asyncio.run(scenario())


def test_busy_polling_is_on_by_default_where_a_core_is_to_spare() -> None:
    spare = affinity.usable_cpus() >= 2

    assert Settings().busy_poll_us == (WINDOW_US if spare else 0)
    assert Settings(busy_poll_us="auto", cpu_affinity="auto").busy_poll_us == 0  # pinned
    assert Settings(busy_poll_us=0).busy_poll_us == 0


def test_the_flag_names_itself_when_refused() -> None:
    with pytest.raises(UsageError, match=re.escape("--busy-poll-us")):
        settings_from_args(build_parser().parse_args(["serve", "--busy-poll-us", "-1"]))


def step_of(sequence_id: int, step: int) -> dict[str, object]:
    return {"sequence_id": sequence_id, "sequence_start": step == 0}


def test_a_polling_server_answers_and_goes_back_to_sleep_once_requests_stop(
    start_server, tiny_repository: Path
) -> None:
    server = start_server(tiny_repository, args=["--busy-poll-us", "200000"])
    pid = server.process.pid
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 6, 1)
    whole = server.stub.ModelInfer(
        build_request("sine-lstm", {"x": x}, ["y"], step_of(8, 0)),
        timeout=30,
    )
    pieces = [
        server.stub.ModelInfer(
            build_request("sine-lstm", {"x": x[:, t : t + 1]}, ["y"], step_of(9, t)), timeout=30
        )
        for t in range(6)
    ]

    assert b"".join(p.raw_output_contents[0] for p in pieces) == whole.raw_output_contents[0]
    assert "polling 200000 µs after a lone client's requests" in server.log()
    time.sleep(0.5)  # past the window
    before = cpu_seconds(pid, pid)
    time.sleep(1.0)
    assert cpu_seconds(pid, pid) - before < 0.2  # the event loop sleeps again


def test_a_server_polls_by_default_where_a_core_is_to_spare(server) -> None:
    polls = f"polling {WINDOW_US} µs after a lone client's requests" in server.log()

    assert polls == (affinity.usable_cpus() >= 2)
