"""`busy_poll_us`: after each inference request the event loop polls, awake, for the window,
then sleeps again; off by default."""

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
from rnnserve.service.busy_poll import BusyPoll
from rnnserve.service.cli import settings_from_args
from rnnserve.service.settings import Settings


async def cpu_while_sleeping(seconds: float) -> float:
    """CPU time this thread (the event loop's) used while awaiting `seconds`."""
    before = time.thread_time()
    await asyncio.sleep(seconds)
    return time.thread_time() - before


def test_the_loop_polls_awake_for_the_window_after_a_request_then_sleeps() -> None:
    async def scenario() -> tuple[float, float]:
        busy = BusyPoll(window_us=300_000)

        busy.touch()
        assert busy.polling
        awake = await cpu_while_sleeping(0.1)  # within the window: the loop turns, polling
        assert busy.polling
        await asyncio.sleep(0.25)  # past it
        assert not busy.polling
        return awake, await cpu_while_sleeping(0.1)

    awake, asleep = asyncio.run(scenario())

    assert awake > 0.02, awake  # a fifth of the core at least, on a loaded machine
    assert asleep < 0.02, asleep


def test_each_request_extends_the_window_from_its_end() -> None:
    async def scenario() -> None:
        busy = BusyPoll(window_us=100_000)

        for _ in range(4):  # 0.24 s in all, longer than the window
            busy.touch()
            await asyncio.sleep(0.06)
            assert busy.polling
        await asyncio.sleep(0.15)

        assert not busy.polling

    asyncio.run(scenario())


def test_busy_polling_is_off_by_default_and_its_flag_names_itself_when_refused() -> None:
    assert Settings.model_fields["busy_poll_us"].default == 0

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
    assert "polling 200000 µs after each request" in server.log()
    time.sleep(0.5)  # past the window
    before = cpu_seconds(pid, pid)
    time.sleep(1.0)
    assert cpu_seconds(pid, pid) - before < 0.2  # the event loop sleeps again
