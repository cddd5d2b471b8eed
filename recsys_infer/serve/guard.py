"""The outermost layer of the service: one error body, a body-size limit, a catch-all for
unexpected errors, and a count of every response.

Every error the service sends has one shape::

    {"error": {"type": "invalid_request", "message": "body.k: Input should be a valid integer"}}

``type`` is one of :data:`ERROR_TYPES`. Messages quote at most a short, ASCII-escaped excerpt
of what was sent, never the whole input, so a hostile body cannot make the error itself fail
to encode or grow with the input.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import Response

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The ``error.type`` of each status the service sends.
ERROR_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    431: "headers_too_large",
    500: "internal",
    503: "unavailable",
}


def error_response(
    status: int, message: str, *, kind: str | None = None, headers: dict[str, str] | None = None, **more: Any
) -> Response:
    """The service's one error body, ASCII-only so it always encodes."""
    body = {"error": {"type": kind or ERROR_TYPES.get(status, "error"), "message": message, **more}}
    return Response(
        json.dumps(body, ensure_ascii=True),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


#: Called after each response with the route template, the status and the seconds it took.
Observer = Callable[[str, int, float], None]
#: The status a request is counted under when its client left before sending the whole body
#: (nginx's "client closed request"); nothing is answered, and nothing of it is executed.
CLIENT_GONE = 499
_GONE = object()


class Guard:
    """ASGI middleware: refuses bodies over ``max_body`` with 413 (by ``Content-Length``, or
    while reading a chunked body), runs nothing of a request whose client left before its body
    was whole, turns an exception no handler took into a logged 500 with no trace in the body,
    and reports every response to ``observe`` (500s and 413s included) under its route's
    template, which ``route_of`` finds for a request no route has seen yet."""

    def __init__(
        self, app: ASGIApp, *, max_body: int, observe: Observer, route_of: Callable[[Scope], str]
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.observe = observe
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]
        entered = dict(scope)  # as it came in: routing rewrites a mount's path in ``scope``

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            body = await self._read(scope, receive)
            if body is None:
                await self._too_large(scope, receive, tracked)
            elif body is _GONE:
                status[0] = CLIENT_GONE
            else:
                await self.app(scope, _replay(body, receive), tracked)
        except Exception:
            logger.exception("unexpected error serving %s %s", scope.get("method"), scope.get("path"))
            if not status[0]:
                response = error_response(500, "an unexpected error occurred; it was logged on the server")
                await response(scope, receive, tracked)
        finally:
            route = getattr(scope.get("route"), "path", None) or self.route_of(entered)
            self.observe(route, status[0] or 500, time.perf_counter() - started)

    async def _read(self, scope: Scope, receive: Receive) -> Any:
        """The whole body; None as soon as it is known to exceed the limit; ``_GONE`` when the
        client left before it was whole (a body cut short is never run as if it were all)."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_body):
                return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return _GONE  # an http.disconnect before the last chunk
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            f"the request body is larger than {self.max_body} bytes (--max-body-bytes, "
            "RECSYS_INFER_MAX_BODY_BYTES); send less per request",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
