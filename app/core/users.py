"""Users and their tokens. A token is 32 random bytes shown once; only its SHA-256 is kept."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from app.core.models import User, utcnow

TOKEN_PREFIX = "ty_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class UserError(ValueError):
    """A user command that cannot be done; the message says why."""


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # The token carries 256 random bits, so a fast unsalted hash is enough: nothing to guess.
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session: Session, name: str, is_admin: bool = False) -> tuple[User, str]:
    """Create `name`; returns the user and the token (which is not stored anywhere)."""
    if not NAME_PATTERN.match(name):
        raise UserError(f"invalid user name {name!r}: letters, digits, '.', '_', '-'; 1-64 chars")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise UserError(f"user {name!r} already exists")
    token = new_token()
    user = User(name=name, is_admin=is_admin, token_hash=hash_token(token))
    session.add(user)
    session.commit()
    return user, token


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def count_users(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def revoke_user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserError(f"no user {name!r}")
    if user.revoked_at is None:
        user.revoked_at = utcnow()
        session.commit()
    return user


# Built once: every request runs it, and building a statement costs more than running it.
_BY_DIGEST = select(User).where(User.token_hash == bindparam("digest"))


def user_for_token(session: Session, token: str) -> User | None:
    """The active user holding `token`, or None."""
    digest = hash_token(token)
    user = session.scalar(_BY_DIGEST, {"digest": digest})
    # Constant-time comparison of the digests, whatever the lookup found.
    if user is None or not hmac.compare_digest(user.token_hash, digest):
        return None
    if user.revoked_at is not None:
        return None
    return user
