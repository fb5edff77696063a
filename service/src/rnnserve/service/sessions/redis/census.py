"""`rnnserve_sessions_active` counted in Redis: every process's sessions of a namespace, by
model version (index.py), from the thread that scrapes /metrics."""

from __future__ import annotations

import asyncio
import threading

from rnnserve.service.sessions.redis.client import RedisClient
from rnnserve.service.sessions.redis.index import SessionIndex


class RedisCensus:
    """Counts the sessions of each model version in a namespace's index, from any thread
    (the /metrics scrape's), with a client of its own on an event loop of its own, in a
    thread of its own: `rnnserve_sessions_active` when scraped (a lone server's store, or
    the supervisor of workers sharing the Redis)."""

    def __init__(self, url: str, namespace: str, timeout_s: float) -> None:
        self._url, self._namespace, self._timeout_s = url, namespace, timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rnnserve-census", daemon=True
        )
        self._thread.start()
        self._index: SessionIndex | None = None

    def __call__(self) -> dict[tuple[str, str], int]:
        return asyncio.run_coroutine_threadsafe(self._count(), self._loop).result()

    async def _count(self) -> dict[tuple[str, str], int]:
        if self._index is None:  # made in the loop that uses it
            redis = RedisClient(self._url, self._namespace, self._timeout_s)
            self._index = SessionIndex(redis)
        return await self._index.by_versions()

    def close(self) -> None:
        if self._index is not None:
            asyncio.run_coroutine_threadsafe(self._index.redis.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
