"""Bearer-token authentication and the owner-or-admin rule."""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from anyio import to_thread
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.db import read_session
from app.core.models import User
from app.core.users import user_for_token

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, invalid or revoked bearer token."}
}

# (detail, WWW-Authenticate) of the two 401s; app/api/early_auth.py gives the same answers.
MISSING_TOKEN = ("missing bearer token: send 'Authorization: Bearer <token>'", "Bearer")
INVALID_TOKEN = ("invalid or revoked token", 'Bearer error="invalid_token"')

# Where app/api/early_auth.py leaves the user it found for a request with a body.
AUTHENTICATED_USER = "trainyard_user"

bearer = HTTPBearer(auto_error=False, description="A token from `trainyard user add`.")


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    """The token's holder. Not bound to the route's session: only its columns are read."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized(*MISSING_TOKEN)
    found = getattr(request.state, AUTHENTICATED_USER, None)
    if found is None:  # a request without a body, not yet authenticated
        found = await to_thread.run_sync(token_holder, credentials.credentials)
    if found is None:
        raise _unauthorized(*INVALID_TOKEN)
    user: User = found
    return user


def token_holder(token: str) -> User | None:
    """The active user holding `token`, read in a session of its own that ends at once: no
    connection is held while the request waits for its next worker thread (held, a burst of
    requests larger than the pool, event streams opening at once, left every thread waiting
    for a connection that only a request waiting for a thread could give back)."""
    with read_session() as session:
        return user_for_token(session, token)


def _unauthorized(detail: str, challenge: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge}
    )


CurrentUser = Annotated[User, Depends(current_user)]


class Owned(Protocol):
    id: int
    owner_id: int | None


def require_owner_or_admin(item: Owned, user: User, action: str, what: str = "job") -> None:
    """403 unless `user` owns `item` (a job, dataset or uploaded model) or is an admin."""
    if user.is_admin or item.owner_id == user.id:
        return
    raise HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"only the {what}'s owner or an admin may {action} {what} {item.id}",
    )
