"""The data plane's phases and its requests in flight: admission and draining in one place.

    loading --load()--> ready --drain()--> draining --close()--> closed

Only a ready data plane admits requests; draining lets those in flight finish, and tells
whoever waits on `draining` (front ends close their idle streams at once).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from rnnserve.service.errors import Unavailable
from rnnserve.service.in_flight import InFlight

log = logging.getLogger(__name__)

Phase = Literal["loading", "ready", "draining", "closed"]


class Lifecycle:
    def __init__(self) -> None:
        self.phase: Phase = "loading"
        self.draining = asyncio.Event()  # set once new requests are refused
        self._in_flight = InFlight()

    def live(self) -> bool:
        return self.phase != "closed"

    def ready(self) -> bool:
        return self.phase == "ready"

    def loaded(self) -> None:
        if self.phase == "loading":
            self.phase = "ready"

    def request(self) -> InFlight:
        """Admits one request (UNAVAILABLE unless ready), counted while in flight in the
        `with` block of what it returns."""
        if self.phase == "loading":
            raise Unavailable("the server is still loading its models; retry shortly")
        if self.phase != "ready":
            raise Unavailable("the server is shutting down; retry on another instance")
        return self._in_flight.request()

    def drain(self) -> None:
        """Refuses new requests from now on."""
        if self.phase in ("loading", "ready"):
            self.phase = "draining"
            self.draining.set()

    async def idle(self, grace_period_s: float) -> None:
        """Waits for the requests in flight to finish, at most the grace period."""
        if not await self._in_flight.idle(grace_period_s):
            log.warning("closing with %d requests still in flight", self._in_flight.count)

    def closed(self) -> None:
        self.phase = "closed"
