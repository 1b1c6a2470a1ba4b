"""A request body may be only so large, counted as it streams in: over the limit the client
gets 413 before the body is parsed (or stored), whatever Content-Length says or omits.

One authenticated 50 MB JSON body used to hold every client up for half a minute while it
was parsed and validated; an upload was written out whole before its size was checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import refuse_early

# Room for a multipart form's boundaries and its other fields, around the uploaded file.
FORM_OVERHEAD_BYTES = 64 * 1024


class Limit(NamedTuple):
    bytes: int  # the largest body allowed
    message: str  # what a client over it is told (the setting to name)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: Limit) -> None:
        super().__init__(413, limit.message)


class BodyLimit:
    """ASGI middleware: `limit_for(content_type)` gives the limit of a request's body."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], Limit]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit = self.limit_for(headers.get(b"content-type", b"").decode("latin-1"))
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit.bytes:
            await refuse_early(send, 413, limit.message)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bytes:
                    # An HTTPException: FastAPI passes it on as the response (413).
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)
