"""The asyncio clients: AsyncRnnClient (on grpc.aio) and AsyncRestClient (REST, on asyncio
streams), with the same methods and arguments as RnnClient and RestClient, to await, and
AsyncSequenceSession, SequenceSession's mirror over either.

    async with AsyncRnnClient("localhost:8001") as client:
        print(await client.tag("hello"))
"""

from rnnserve.client.aio.client import AsyncRnnClient
from rnnserve.client.aio.rest import AsyncRestClient
from rnnserve.client.aio.sequence import AsyncSequenceSession

__all__ = ["AsyncRestClient", "AsyncRnnClient", "AsyncSequenceSession"]
