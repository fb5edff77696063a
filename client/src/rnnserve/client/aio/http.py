"""HttpConnection: one HTTP/1.1 client connection on asyncio streams, for AsyncRestClient.

The standard library has no asyncio HTTP client, and the REST API needs little of HTTP: a
request whose body has a known length, and an answer framed by Content-Length, by chunks,
or by the server closing the connection; keep-alive between exchanges. The answer's
header fields are parsed by http.client's own parser; a malformed or cut answer raises
http.client's exceptions, as the sync client meets them.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import ssl
from collections.abc import Mapping

from rnnserve.client.rest_wire import dropped

_END_OF_HEAD = b"\r\n\r\n"
_NO_BODY = frozenset({204, 304})


class HttpConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.reusable = True  # the server keeps it open after the last answer

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext | None) -> HttpConnection:
        return cls(*await asyncio.open_connection(host, port, ssl=context))

    @property
    def closed(self) -> bool:
        """Closed, here or by the server (as an idle connection is after its keep-alive
        timeout: its socket is read, since the event loop may not have run since)."""
        if self._writer.is_closing() or self._reader.at_eof():
            return True
        return dropped(self._writer.get_extra_info("socket"))

    def close(self) -> None:
        self._writer.close()

    async def exchange(
        self, method: str, target: str, host: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request and its answer's status, header fields and body, read whole. A
        connection whose exchange failed or was cancelled is closed: its late answer must
        never be read as a later request's."""
        try:
            self._writer.write(_head(method, target, host, body, headers) + (body or b""))
            await self._writer.drain()
            return await self._answer(method)
        except BaseException:
            self.close()
            raise

    async def _answer(self, method: str) -> tuple[int, http.client.HTTPMessage, bytes]:
        status, fields = await self._head()
        while 100 <= status < 200:  # interim answers (100 Continue): the final one follows
            status, fields = await self._head()
        self.reusable = "close" not in fields.get("Connection", "").lower()
        if method == "HEAD" or status in _NO_BODY:
            return status, fields, b""
        if "chunked" in fields.get("Transfer-Encoding", "").lower():
            return status, fields, await self._chunks()
        length = fields.get("Content-Length")
        if length is None:  # the body lasts until the server closes the connection
            self.reusable = False
            return status, fields, await self._reader.read()
        if not length.isdigit():
            raise http.client.HTTPException(f"Content-Length {length!r} is not a byte count")
        return status, fields, await self._exactly(int(length))

    async def _head(self) -> tuple[int, http.client.HTTPMessage]:
        try:
            head = await self._reader.readuntil(_END_OF_HEAD)
        except asyncio.IncompleteReadError as error:
            if error.partial:
                raise http.client.IncompleteRead(error.partial) from None
            raise http.client.RemoteDisconnected("the server closed the connection") from None
        except asyncio.LimitOverrunError:
            raise http.client.LineTooLong("the answer's head") from None
        line, _, fields = head.partition(b"\r\n")
        version, _, rest = line.decode("latin-1").partition(" ")
        status = rest[:3]
        if not version.startswith("HTTP/") or not status.isdigit():
            raise http.client.BadStatusLine(line.decode("latin-1"))
        return int(status), http.client.parse_headers(io.BytesIO(fields))

    async def _chunks(self) -> bytes:
        chunks = []
        while size := await self._chunk_size():
            chunks.append(await self._exactly(size))
            await self._exactly(2)  # the chunk's CRLF
        while await self._line() != b"\r\n":  # trailer fields, unused
            pass
        return b"".join(chunks)

    async def _chunk_size(self) -> int:
        line = await self._line()
        try:
            return int(line.split(b";")[0], 16)
        except ValueError:
            raise http.client.HTTPException(f"a chunk size that is not hex: {line!r}") from None

    async def _line(self) -> bytes:
        try:
            return await self._reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as error:
            raise http.client.IncompleteRead(error.partial) from None
        except asyncio.LimitOverrunError:
            raise http.client.LineTooLong("a chunk's size") from None

    async def _exactly(self, size: int) -> bytes:
        try:
            return await self._reader.readexactly(size)
        except asyncio.IncompleteReadError as error:
            raise http.client.IncompleteRead(error.partial, size - len(error.partial)) from None


def _head(
    method: str, target: str, host: str, body: bytes | None, headers: Mapping[str, str]
) -> bytes:
    fields = {"Host": host, "Content-Length": str(len(body or b"")), **headers}
    if any("\r" in text or "\n" in text for field in fields.items() for text in field):
        raise ValueError(f"a header field may not hold a line break: {fields}")
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
