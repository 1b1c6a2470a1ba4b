"""Bad input is a 4xx that names the field, never a 500, and never echoes much of the input.

FastAPI's own 422 handler puts each offending value into the response as it came: a 50 MB
string comes back whole, and NaN, an infinity or a lone surrogate (all of which Python's JSON
parser accepts) cannot be encoded at all, so the client got a 500 instead of the 422.

A body the framework cannot parse at all (multipart without a boundary or with broken parts,
too many form fields or files) was a 400 that the OpenAPI document never mentions: it is a
422 like a malformed JSON body. A 405 names in `Allow` every method the path's document lists,
not only those of the route tried first (OPTIONS /jobs answered `Allow: POST`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import Send

# What a 422 holds, as the OpenAPI document shows it: for a route that describes its own 422
# (`responses={422: {"description": ..., "content": VALIDATION_ERRORS}}`), FastAPI leaves the
# body out of the document.
VALIDATION_ERRORS = {
    "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
}

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


async def http_error(request: Request, error: Exception) -> Response:
    if not isinstance(error, HTTPException):  # registered for exactly this type
        raise error
    if error.status_code == 400:
        # The app raises no 400 of its own: every one is the framework failing to parse the
        # body (Starlette's multipart and form parsers, FastAPI's body reader).
        detail = [
            {"type": "body_invalid", "loc": ["body"], "msg": clip(str(error.detail), MESSAGE_CHARS)}
        ]
        return JSONResponse({"detail": detail}, status_code=422)
    if error.status_code == 405 and (allowed := documented_methods(request)):
        error = HTTPException(405, error.detail, {**(error.headers or {}), "Allow": allowed})
    return await http_exception_handler(request, error)


_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def documented_methods(request: Request) -> str:
    """The methods the OpenAPI document lists for the request's path, as `Allow` lists them
    ("GET, POST"); empty for a path it does not describe (/docs, /openapi.json)."""
    # Routing's view of the path: without the prefix a proxy mounts the app under.
    path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    schema = request.app.openapi()  # built once, then cached by FastAPI
    methods = {
        method.upper()
        for template, operations in schema.get("paths", {}).items()
        if compile_path(template)[0].match(path)
        for method in operations
        if method in _HTTP_METHODS
    }
    return ", ".join(sorted(methods))


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
    app.add_exception_handler(HTTPException, http_error)
