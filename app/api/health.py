"""/healthz: what a load balancer or a person asks first. 503 when the service cannot do its
work (the database cannot be reached, the data directory cannot be written), saying which;
and every request that fails for the same reason gets a 503, not a 500."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app import __version__
from app.api.errors import MESSAGE_CHARS, clip
from app.api.schemas import Health
from app.core.config import get_settings
from app.core.db import get_session_factory

router = APIRouter(tags=["health"])


def database_problem() -> str | None:
    try:
        with get_session_factory()() as session:
            session.execute(text("SELECT 1"))
    except OperationalError as error:
        return clip(str(error.orig or error).splitlines()[0], MESSAGE_CHARS)
    return None


def data_dir_problem() -> str | None:
    """Whether a file can be written (and synced) in the data directory: a full disk is
    found here before a job or an upload finds it."""
    folder = get_settings().data_dir
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".healthz-") as probe:
            probe.write(b"ok")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        return f"cannot write in {folder}: {error.strerror}"
    return None


@router.get(
    "/healthz",
    response_model=Health,
    responses={
        503: {"model": Health, "description": "The database or the data directory is unusable."}
    },
)
def healthz() -> Health | Response:
    """Liveness, database reachability and a writable data directory (no token needed)."""
    problems = {"database": database_problem(), "data_dir": data_dir_problem()}
    health = Health(
        status="unavailable" if any(problems.values()) else "ok",
        database=problems["database"] or "ok",
        data_dir=problems["data_dir"] or "ok",
        version=__version__,
    )
    if health.status == "ok":
        return health
    return JSONResponse(health.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


RETRY_AFTER = {"Retry-After": "10"}


def unavailable_detail(error: OperationalError) -> str:
    cause: Any = error.orig or error
    return "the database cannot be used right now: " + clip(
        str(cause).splitlines()[0], MESSAGE_CHARS
    )


async def database_unavailable(request: Request, error: Exception) -> Response:
    """Any request the database refused as unreachable, locked for too long or out of disk:
    503 with Retry-After, naming the cause, instead of a bare 500."""
    assert isinstance(error, OperationalError)
    return JSONResponse(
        {"detail": unavailable_detail(error)},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers=RETRY_AFTER,
    )
