"""The asyncio client: AsyncRnnClient and AsyncSequenceSession, on grpc.aio, with the same
methods and arguments as RnnClient and SequenceSession, to await.

    async with AsyncRnnClient("localhost:8001") as client:
        print(await client.tag("hello"))
"""

from rnnserve.client.aio.client import AsyncRnnClient
from rnnserve.client.aio.sequence import AsyncSequenceSession

__all__ = ["AsyncRnnClient", "AsyncSequenceSession"]
