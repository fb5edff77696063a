"""Busy polling (`busy_poll_us`): after each inference request the event loop keeps polling,
without sleeping, for a window of time, so that a client's next request finds it running.

An idle event loop sleeps in epoll; grpc.aio's poller thread wakes it for each call. On a
machine whose cores doze between a lone client's requests, that wake-up, and the cold caches
the loop then runs through, cost a step more than the step itself (docs/performance.md).
Polling keeps the loop's core awake while requests keep coming, as ONNX Runtime's spinning
threads and the kernel's `busy_poll` do: a core kept busy, for latency. Once no request ended
for a window, the loop sleeps as before. Off (0) by default: it assumes a core to spare, and a
CPU quota (a container's limit) pays for the polling too.

The loop is kept awake by a callback that schedules itself for its next turn: a turn with a
callback ready polls its file descriptors with no timeout.
"""

from __future__ import annotations

import asyncio


class BusyPoll:
    """Keeps the running event loop polling for `window_us` after each `touch`."""

    def __init__(self, window_us: int) -> None:
        self._window_s = window_us / 1e6
        self._until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.polling = False

    def touch(self) -> None:
        """A request ended, on the event loop's thread: poll for the window from now."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._until = loop.time() + self._window_s
        if not self.polling:
            self.polling = True
            loop.call_soon(self._poll)

    def _poll(self) -> None:
        loop = self._loop
        assert loop is not None
        if loop.time() < self._until:
            loop.call_soon(self._poll)
        else:
            self.polling = False
