"""Busy polling (`busy_poll_us`): while a lone client's requests come close together, the
event loop keeps polling, without sleeping, for a window of time after each one, so that the
client's next request finds it running.

An idle event loop sleeps in epoll; grpc.aio's poller thread wakes it for each call. On a
machine whose cores doze between a lone client's requests, that wake-up, and the cold caches
the loop then runs through, cost a step more than the step itself (docs/performance.md).
Polling keeps the loop's core awake while requests keep coming, as ONNX Runtime's spinning
threads and the kernel's `busy_poll` do: a core kept busy, for latency.

Polling is for a client waiting alone. It starts only when a request ends within the window
of the one before (a client that steps slower than the window would find the loop asleep all
the same), of the same session (requests of other sessions in between are other clients
stepping), and no other request ran beside it. Clients in flight together keep the loop busy
without polling, and between their bursts its core is better left to grpc's threads, which
read the next requests, and to whatever else runs on the machine: polling stops until one
session's requests follow each other alone again. Requests of no session (stateless ones,
multi-session ones) count as one session. Once no request ended for a window, the loop
sleeps as before.

`auto`, the default, polls for `WINDOW_US` where a core is to spare: the process may use two
CPUs at least (its affinity and its CPU quota: a container's limit, which the polling would
spend) and its threads are not pinned to one (`cpu_affinity`), where the polling loop would
hold up grpc's threads that bring it the next request.

The loop is kept awake by a callback that schedules itself for its next turn: a turn with a
callback ready polls its file descriptors with no timeout.
"""

from __future__ import annotations

import asyncio
import math

from rnnserve.service import affinity

# Longer than a lone client's cycle (about 1 ms on two cores), short enough that a client
# pausing between bursts costs at most this much polling.
WINDOW_US = 2000


def auto_window_us(cpu_affinity: str) -> int:
    """`auto`: `WINDOW_US` where the process has a core to spare for polling, else 0 (off)."""
    spare = cpu_affinity == affinity.NONE and affinity.usable_cpus() >= 2
    return WINDOW_US if spare else 0


class BusyPoll:
    """Keeps the running event loop polling for `window_us` after each request that ran alone
    and ended within `window_us` of the one before, of the same session."""

    def __init__(self, window_us: int) -> None:
        self._window_s = window_us / 1e6
        self._last = -math.inf  # when the last request ended: none yet
        self._session: int | str = 0  # the session of the last request
        self._until = 0.0
        self._running = 0
        self._crowded = False  # a request ran beside another since the loop last had none
        self._loop: asyncio.AbstractEventLoop | None = None
        self.polling = False

    def begin(self) -> None:
        """A request starts running, on the event loop's thread."""
        self._running += 1
        if self._running > 1:
            self._crowded = True
            self._until = 0.0  # polling, if it was, stops at the loop's next turn

    def end(self, session: int | str) -> None:
        """A request of `session` (0 or "": none) ended, on the event loop's thread: poll for
        the window from now, if it ran alone and the one before, of the same session, ended
        within the window; else stop polling at the loop's next turn."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._running -= 1
        now = loop.time()
        alone = not self._crowded and session == self._session
        close = alone and now - self._last < self._window_s
        self._last, self._session = now, session
        if self._running == 0:
            self._crowded = False
        self._until = now + self._window_s if close else 0.0
        if close and not self.polling:
            self.polling = True
            loop.call_soon(self._poll)

    def _poll(self) -> None:
        loop = self._loop
        assert loop is not None
        if loop.time() < self._until:
            loop.call_soon(self._poll)
        else:
            self.polling = False
