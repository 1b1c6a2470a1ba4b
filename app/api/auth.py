"""Bearer-token authentication and the owner-or-admin rule."""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.deps import SessionDep
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


def current_user(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized(*MISSING_TOKEN)
    found = getattr(request.state, AUTHENTICATED_USER, None)
    if found is not None:  # authenticated before its body was read, by this same token
        return session.merge(found, load=False)
    user = user_for_token(session, credentials.credentials)
    # End the read transaction: its connection goes back to the pool while the route waits
    # for a worker thread. Held, a burst of requests larger than the pool (event streams
    # opening at once) left every thread waiting for a connection that only a request
    # waiting for a thread could give back. (The session keeps `user`: nothing expires.)
    session.commit()
    if user is None:
        raise _unauthorized(*INVALID_TOKEN)
    return user


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
