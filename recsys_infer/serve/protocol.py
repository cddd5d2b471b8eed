"""HTTP/1.1 as uvicorn speaks it (httptools), with two bounds it lacks: the size of a request's
head (its request line and headers) and the time a client may take to send it.

Without them, one client could send an 80 MB header, which the parser buffers on the event loop
while every other client waits (5.1 s in a probe), or open connections and send nothing or a
byte at a time and hold them for ever. Past ``max_header_bytes`` the connection is answered 431
and closed; a head not complete ``header_timeout_s`` after the connection opened (or, on a
kept-alive connection, after its next request began) is answered 408 and closed. Both answers
carry the service's error body. Bodies are bounded by the service itself (``max_body_bytes``).
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .guard import ERROR_TYPES
from .settings import ServeSettings

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_LINGER_S = 2.0


def bounded_http(settings: ServeSettings) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with ``settings``' head size and head time bounds; pass it
    as ``uvicorn.run(..., http=bounded_http(settings))``."""

    class BoundedHttpTools(HttpToolsProtocol):
        max_head = settings.max_header_bytes
        head_timeout = float(settings.header_timeout_s)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._discarding = False
            self._start_head()

        def _start_head(self) -> None:
            self._in_head, self._head_bytes, self._tail = True, 0, b""
            self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.head_timeout, self._slow)

        def _end_head(self) -> None:
            self._in_head = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def data_received(self, data: bytes) -> None:
            if self._discarding:  # refused: what the client still sends is read and dropped
                return
            if self._in_head:
                # Count the head's bytes only: the first blank line ends it (possibly across chunks).
                end = (self._tail + data).find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else max(0, end - len(self._tail))
                self._tail = data[-3:]
                if self._head_bytes > self.max_head:
                    self._refuse(
                        431, f"the request's headers exceed {self.max_head} bytes (--max-header-bytes)"
                    )
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._in_head:  # the next request on a kept-alive connection
                self._start_head()

        def on_headers_complete(self) -> None:
            self._end_head()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._end_head()
            super().connection_lost(exc)

        def _slow(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self._refuse(
                    408,
                    f"the request's headers took longer than {self.head_timeout:g} s (--header-timeout-s)",
                )

        def _refuse(self, status: int, message: str) -> None:
            self._end_head()
            body = json.dumps({"error": {"type": ERROR_TYPES[status], "message": message}}).encode()
            head = [
                b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
            # A lingering close, as nginx does it: send the answer and the end of our side, drop
            # what the client is still sending, and close a moment later. Closing at once, with
            # its bytes unread, would reset the connection and lose the answer on the way.
            self._discarding = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.transport.close)

    return BoundedHttpTools
