"""Each server process runs on uvloop's event loop (libuv's, in C), a dependency of the
server, unless `event_loop` asks for asyncio's own; where uvloop is missing, `auto` runs on
asyncio's and `uvloop` is refused at start. Either loop answers the same."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import pytest
from sessions.session_helpers import AioSessions

from rnnserve.protocol.errors import UsageError
from rnnserve.service.event_loop import loop_factory, loop_name

X = np.sin(np.linspace(0, 3, 9, dtype=np.float32))


@pytest.mark.parametrize("choice", ["auto", "uvloop"])
def test_auto_and_uvloop_run_on_uvloop(choice) -> None:
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        assert loop_name(runner.get_loop()) == "uvloop"


def test_asyncio_runs_on_pythons_own_loop() -> None:
    with asyncio.Runner(loop_factory=loop_factory("asyncio")) as runner:
        assert loop_name(runner.get_loop()) == "asyncio"


def test_without_uvloop_auto_runs_on_asyncio_and_uvloop_is_refused(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` fails, as uninstalled

    assert loop_factory("auto") is None
    with pytest.raises(UsageError, match="event_loop uvloop: uvloop is not installed"):
        loop_factory("uvloop")


def test_a_sequence_gets_the_same_answers_on_either_loop(start_server, sine_repository) -> None:
    answers = {}
    for choice in ("auto", "asyncio"):
        server = start_server(sine_repository, env={"RNNSERVE_EVENT_LOOP": choice})

        async def sequence(address: str = server.address) -> np.ndarray:
            sessions = AioSessions(address)
            try:
                unary = await sessions.unary("sine-lstm", X, [4, 5], sequence_id=1)
                streamed = await sessions.streamed("sine-lstm", X, [2, 7], sequence_id=2)
            finally:
                await sessions.close()
            np.testing.assert_array_equal(unary, streamed)
            return unary

        answers[choice] = asyncio.run(sequence())
        loop = "uvloop" if choice == "auto" else "asyncio"
        assert f"event loop: {loop}" in server.log()

    np.testing.assert_array_equal(answers["auto"], answers["asyncio"])
