"""A request that carries a body is authenticated before the body is read: without a valid
token an upload is refused (401) before a byte of it is stored or parsed. (FastAPI reads
the body before it resolves the route's dependencies, the token check among them.)"""

from __future__ import annotations

from anyio import to_thread
from sqlalchemy.exc import OperationalError
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.auth import AUTHENTICATED_USER, INVALID_TOKEN, MISSING_TOKEN, token_holder
from app.api.errors import refuse_early
from app.api.health import RETRY_AFTER, unavailable_detail


class AuthenticateBeforeBody:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ()))
        if scope["type"] != "http" or not _has_body(headers):
            await self.app(scope, receive, send)
            return
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        # The same answers as the route's own check (app/api/auth.py), before the body.
        if scheme.lower() != "bearer" or not token.strip():
            detail, challenge = MISSING_TOKEN
        else:
            try:
                user = await to_thread.run_sync(token_holder, token.strip())
            except OperationalError as error:  # as app/api/health.py answers the routes
                await refuse_early(send, 503, unavailable_detail(error), RETRY_AFTER)
                return
            if user is not None:
                # The route's own check (app/api/auth.py) takes this user instead of looking
                # the token up a second time.
                scope.setdefault("state", {})[AUTHENTICATED_USER] = user
                await self.app(scope, receive, send)
                return
            detail, challenge = INVALID_TOKEN
        await refuse_early(send, 401, detail, {"WWW-Authenticate": challenge})


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length", b"0")
    return headers.get(b"transfer-encoding") is not None or (length.isdigit() and int(length) > 0)
