"""The memory budget: what one request may imply, and what the requests in flight may take
together, held before any work.

Batch and sequence length are capped apart (max_batch_size, max_sequence_length), so a
request inside both may still imply gigabytes: ONNX Runtime computes an RNN's gates for
every time step of every row at once. Each request's footprint (tasks/base.py: inputs,
outputs, the recurrent kernels' working memory) is read off its shapes at admission;
past `max_request_elements`, or when the requests in flight would take more than
`max_inflight_bytes` with it, it is refused RESOURCE_EXHAUSTED naming the limit and its
size. The footprints held are the gauge `rnnserve_request_bytes_in_flight`, the messages
(below) `rnnserve_request_message_bytes`.

A request's message is held from the moment it arrives, refused or not, so that messages
cannot take the memory that requests are refused to spare: the front ends receive each
through `receive`, which waits (first come, first served) until the bytes held and the
messages being received leave room for one more of its largest size. A message whose size
is told only once it is in (gRPC's) counts as the largest the server accepts until then:
the number received at once follows from the budget. Footprints are judged on the bytes
held alone, so that messages being received never refuse a small request.
Released bytes go back to the system (service/memory.py) every TRIM_BYTES.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from rnnserve.service import memory, metrics
from rnnserve.service.errors import ResourceExhausted
from rnnserve.service.tasks.footprint import Footprint

SMALLER = "send fewer rows or shorter pieces of the sequence"


class Budget:
    def __init__(self, max_request_elements: int, max_inflight_bytes: int) -> None:
        self.max_request_elements = max_request_elements
        self.max_inflight_bytes = max_inflight_bytes
        self.held = 0  # bytes of the requests in flight, and of the messages that came
        self.receiving = 0  # bytes of the messages being received, each at its largest
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._freed = 0  # bytes released since memory last went back to the system
        metrics.REQUEST_BYTES_LIMIT.set(max_inflight_bytes)
        self._gauge = metrics.TALLIES.counter(metrics.REQUEST_BYTES_IN_FLIGHT)
        self._message_bytes = metrics.TALLIES.counter(metrics.REQUEST_MESSAGE_BYTES)

    def hold(self, footprint: Footprint, model: str) -> Held:
        """Holds the request's bytes, from now until the end of the `with` block of what it
        returns; ResourceExhausted when it may not."""
        self._check(footprint, model)
        self.held += footprint.bytes
        self._gauge.value += footprint.bytes
        return Held(self, footprint.bytes)

    def release(self, size: int) -> None:
        """A request's footprint is given back."""
        self._gauge.value -= size
        self._freed_bytes(size)

    async def receive(self, largest: int) -> Arrival:
        """Waits until a message of at most `largest` bytes may be received; what it returns
        holds `largest` until `arrived` tells the message's size, then that size until its
        `with` block ends. ResourceExhausted when it could never fit."""
        arrival = self.receive_now(largest)
        if arrival is None:
            await self._wait(largest)
            arrival = self._arrival(largest)
        return arrival

    def receive_now(self, largest: int) -> Arrival | None:
        """`receive` when the message may be received at once (no one in line, room for
        it), else None: then wait in line through `receive`. Most messages find room, and
        a front end that asks here first pays no coroutine for them."""
        if largest > self.max_inflight_bytes:
            raise ResourceExhausted(
                f"the request's message may take {largest:,} bytes; the requests in flight "
                f"may take at most {self.max_inflight_bytes:,} bytes together "
                "(max_inflight_bytes)"
            )
        if self._waiting or not self._fits(largest):
            return None
        self.receiving += largest
        return self._arrival(largest)

    def _arrival(self, largest: int) -> Arrival:
        """A message being received, counted at its largest (in `receiving` already)."""
        self._message_bytes.value += largest
        return Arrival(self, largest)

    def waited(self, largest: int) -> ResourceExhausted:
        """Why a message of `largest` bytes found no room in time."""
        return ResourceExhausted(
            f"the requests in flight hold {self.held:,} bytes and messages being received "
            f"{self.receiving:,} of at most {self.max_inflight_bytes:,} (max_inflight_bytes): "
            f"no room for a message of up to {largest:,} bytes; retry later"
        )

    def _arrived(self, largest: int, size: int) -> None:
        """A message received as one of at most `largest` bytes came with `size`."""
        self.receiving -= largest
        self.held += size
        self._message_bytes.value += size - largest
        if self._waiting:
            self._admit_waiting()

    def _departed(self, receiving: int, size: int) -> None:
        """A message's bytes are given back: `receiving` when it never came, else `size`."""
        self.receiving -= receiving
        self._message_bytes.value -= receiving + size
        self._freed_bytes(size)

    def _freed_bytes(self, size: int) -> None:
        """`size` bytes held no more: room for those in line, and every TRIM_BYTES, the
        heaps' free memory back to the system."""
        self.held -= size
        if self._waiting:
            self._admit_waiting()
        self._freed += size
        if self._freed >= memory.TRIM_BYTES:
            self._freed = 0
            memory.give_back()

    def _fits(self, size: int) -> bool:
        return self.held + self.receiving + size <= self.max_inflight_bytes

    async def _wait(self, largest: int) -> None:
        """In line until `largest` fits (counted as being received from then on)."""
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append((largest, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.cancelled():  # in line (or passed over since: see below)
                with contextlib.suppress(ValueError):
                    self._waiting.remove((largest, turn))
            else:  # its turn had come: given back
                self.receiving -= largest
            self._admit_waiting()
            raise

    def _admit_waiting(self) -> None:
        """The messages in line that fit now, in their order."""
        while self._waiting:
            largest, turn = self._waiting[0]
            if turn.cancelled():  # its waiter was cancelled and has yet to resume
                self._waiting.popleft()
                continue
            if not self._fits(largest):
                return
            self._waiting.popleft()
            self.receiving += largest
            turn.set_result(None)

    def _check(self, footprint: Footprint, model: str) -> None:
        if footprint.elements > self.max_request_elements:
            raise ResourceExhausted(
                f"the request implies {_size(footprint, model)}; at most "
                f"{self.max_request_elements:,} elements are accepted (max_request_elements): "
                f"{SMALLER}"
            )
        if footprint.bytes > self.max_inflight_bytes:
            raise ResourceExhausted(
                f"the request implies {_size(footprint, model)}; the requests in flight may "
                f"take at most {self.max_inflight_bytes:,} bytes together "
                f"(max_inflight_bytes): {SMALLER}"
            )
        if self.held + footprint.bytes > self.max_inflight_bytes:
            raise ResourceExhausted(
                f"the request implies {_size(footprint, model)}, and the requests in flight "
                f"hold {self.held:,} bytes of at most {self.max_inflight_bytes:,} "
                "(max_inflight_bytes); retry later"
            )


class Held:
    """A request's bytes held in the budget until its `with` block ends (a class, not a
    generator: entered on every request)."""

    __slots__ = ("_budget", "_size")

    def __init__(self, budget: Budget, size: int) -> None:
        self._budget = budget
        self._size = size

    def __enter__(self) -> None:
        pass

    def __exit__(self, *_: object) -> None:
        self._budget.release(self._size)


class Arrival:
    """A message's bytes in the budget: its largest size while it is received, its own once
    it arrived, until its `with` block ends (which the front ends leave once they dropped
    the message, so that its memory can go back to the system)."""

    __slots__ = ("_budget", "_receiving", "_size")

    def __init__(self, budget: Budget, largest: int) -> None:
        self._budget = budget
        self._receiving = largest
        self._size = 0

    def arrived(self, size: int) -> None:
        """The message is in: `size` bytes (at most its largest)."""
        self._budget._arrived(self._receiving, size)
        self._receiving, self._size = 0, size

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *_: object) -> None:
        self._budget._departed(self._receiving, self._size)


def _size(footprint: Footprint, model: str) -> str:
    """A refused request's footprint in words (written only for a refusal)."""
    return (
        f"{footprint.elements:,} elements (inputs {footprint.inputs:,}, outputs "
        f"{footprint.outputs:,}, recurrent work {footprint.work:,}: {footprint.rows:,} "
        f"rows x {footprint.steps:,} time steps of model '{model}'), {footprint.bytes:,} bytes"
    )
