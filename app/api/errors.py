"""Bad input is a 4xx that names the field, never a 500, and never echoes much of the input.

FastAPI's own 422 handler puts each offending value into the response as it came: a 50 MB
string comes back whole, and NaN, an infinity or a lone surrogate (all of which Python's JSON
parser accepts) cannot be encoded at all, so the client got a 500 instead of the 422.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import Send

# How much of an offending value a 422 repeats (enough to recognise it), and of a message.
ECHO_CHARS = 80
MESSAGE_CHARS = 300


def short_input(value: Any) -> Any:
    """`value` as a short, JSON-encodable echo: numbers and short strings as they are, NaN
    and infinities by name, anything long or nested as the start of its text form."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else clip(str(value), ECHO_CHARS)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # "nan", "inf"
    return clip(value if isinstance(value, str) else repr(value), ECHO_CHARS)


def clip(text: str, limit: int) -> str:
    """At most `limit` characters of `text`, encodable as UTF-8 (a lone surrogate, which
    cannot be, is shown as its escape)."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic's errors as FastAPI shows them (type, loc, msg, input), made short and safe."""
    described = []
    for error in errors:
        item: dict[str, Any] = {
            "type": error.get("type"),
            "loc": [short_input(part) for part in error.get("loc", ())],
            "msg": clip(str(error.get("msg", "")), MESSAGE_CHARS),
        }
        if "input" in error:
            item["input"] = short_input(error["input"])
        described.append(item)
    return described


async def validation_error(_request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, RequestValidationError):  # registered for exactly this type
        raise error
    return JSONResponse({"detail": describe_errors(error.errors())}, status_code=422)


async def refuse_early(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    """Answer `{"detail": ...}` from ASGI middleware, before the app has read the request
    (its body is left unread, so the connection is closed after the answer)."""
    body = json.dumps({"detail": detail}).encode()
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
