"""Event streams: GET /jobs/{id}/events (a job's status changes, epochs and log lines, then
`end`) and GET /events (every job's status changes), as server-sent events or, with
`Accept: application/x-ndjson`, one JSON object per line.

A stream sends the backlog after the id it resumes from (Last-Event-ID, or ?after=), then
live events as they are committed. Streams do not poll the database each: one watcher per
API process wakes them all when an event is committed (PostgreSQL's LISTEN/NOTIFY; on SQLite
it reads the newest event id every WATCH_SECONDS).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from app.api.auth import UNAUTHORIZED, CurrentUser, current_user
from app.api.deps import SessionDep
from app.api.jobs import NOT_FOUND, JobId, job_or_404
from app.core import events
from app.core.db import POSTGRES_TIMEOUTS, get_engine, get_session_factory
from app.core.models import TERMINAL_STATUSES, Job, User

WATCH_SECONDS = 0.25  # SQLite: how often the newest event id is read
LISTEN_CHECK_SECONDS = 5.0  # PostgreSQL: a quiet LISTEN connection is checked this often
EVENTS_CHANNEL = "trainyard_events"  # notified by migrations/versions/0014
HEARTBEAT_SECONDS = 15.0
NDJSON = "application/x-ndjson"
log = logging.getLogger(__name__)

router = APIRouter(tags=["events"], dependencies=[Depends(current_user)], responses=UNAUTHORIZED)


class Watcher:
    """Wakes every waiting stream of this event loop when an event is committed anywhere.
    On PostgreSQL it LISTENs (migration 0014 makes each insert into job_events NOTIFY on
    commit): one connection per API process, whatever the number of streams, and no delay.
    On SQLite, which has no notifications, it reads the newest event id every WATCH_SECONDS
    (one query per process, not per stream). It runs only while a stream is subscribed.

    `generation` counts the wake-ups: a stream notes it before reading, and its wait returns
    at once if an event came in between (it would otherwise sleep until the next one)."""

    def __init__(self) -> None:
        self.changed = asyncio.Condition()
        self.generation = 0
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None

    @contextmanager
    def subscribed(self) -> Iterator[None]:
        self.subscribers += 1
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._watch())
        try:
            yield
        finally:
            self.subscribers -= 1

    async def _watch(self) -> None:
        while self.subscribers > 0:
            try:
                if get_engine().dialect.name == "postgresql":
                    await self._listen()
                else:
                    await self._poll()
            except Exception as error:  # the database away: streams wait, the watcher retries
                log.debug("event watcher: %s", error)
                await asyncio.sleep(WATCH_SECONDS)

    async def _poll(self) -> None:
        newest = await to_thread.run_sync(_newest_id)
        while self.subscribers > 0:
            await asyncio.sleep(WATCH_SECONDS)
            latest = await to_thread.run_sync(_newest_id)
            if latest != newest:
                newest = latest
                await self._wake()

    async def _listen(self) -> None:
        import psycopg
        from psycopg.conninfo import make_conninfo

        url = get_engine().url.set(drivername="postgresql")
        conninfo = make_conninfo(url.render_as_string(hide_password=False), **POSTGRES_TIMEOUTS)
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
            await connection.execute(f"LISTEN {EVENTS_CHANNEL}")
            await self._wake()  # what was committed while nobody listened
            quiet = 0.0
            while self.subscribers > 0:
                woken = False
                async for _ in connection.notifies(timeout=1.0):
                    woken = True
                    await self._wake()
                quiet = 0.0 if woken else quiet + 1.0
                if quiet >= LISTEN_CHECK_SECONDS:  # a dead connection raises here: reconnect
                    await connection.execute("SELECT 1")
                    quiet = 0.0

    async def _wake(self) -> None:
        async with self.changed:
            self.generation += 1
            self.changed.notify_all()

    async def wait(self, seen: int, timeout: float) -> bool:
        """Until an event is committed anywhere after wake-up `seen` (True), or `timeout`
        passes (False)."""
        async with self.changed:
            try:
                await asyncio.wait_for(
                    self.changed.wait_for(lambda: self.generation != seen), timeout
                )
            except TimeoutError:
                return False
        return True


_watchers: dict[asyncio.AbstractEventLoop, Watcher] = {}


def watcher() -> Watcher:
    return _watchers.setdefault(asyncio.get_running_loop(), Watcher())


def _newest_id() -> int:
    with get_session_factory()() as session:
        return events.newest_id(session)


@dataclass
class Batch:
    events: list[tuple[int, str, dict[str, Any]]]
    final: dict[str, Any] | None  # the job's end, once it has ended and nothing is left


def _read(job_id: int | None, after: int, logs: bool) -> Batch:
    with get_session_factory()() as session:
        found = _events(session, job_id, after, logs)
        final = None
        if job_id is not None and not found:
            job = session.get(Job, job_id)
            if job is None or job.status in TERMINAL_STATUSES:
                # Asked again: each statement of a PostgreSQL transaction sees what had
                # committed when it began, so the run's end may have committed between the
                # first read and the job's, its status event unseen by the first.
                found = _events(session, job_id, after, logs)
                final = None if found else _end(job)
        return Batch(found, final)


def _events(
    session: Session, job_id: int | None, after: int, logs: bool
) -> list[tuple[int, str, dict[str, Any]]]:
    return [
        # The feed of every job says which job each change is of.
        (
            int(event.position or 0),  # never null once committed, and only those are read
            event.kind,
            event.data if job_id else {"job_id": event.job_id, **event.data},
        )
        for event in events.after(session, job_id, after, logs=logs)
    ]


def _end(job: Job | None) -> dict[str, Any]:
    if job is None:  # deleted while followed
        return {"status": "deleted"}
    return {
        "status": job.status,
        "failure_reason": job.failure_reason,
        "failure_message": job.failure_message,
        "attempt": job.attempt,
    }


async def stream(
    job_id: int | None, after: int, logs: bool
) -> AsyncIterator[tuple[int | None, str, dict[str, Any]]]:
    """(id, event, data) from after `after`; for a job, `end` after its final status. `end`
    and heartbeats carry no id: a client resuming after the last id gets `end` again."""
    live = watcher()
    with live.subscribed():
        while True:
            seen = live.generation
            batch = await to_thread.run_sync(_read, job_id, after, logs)
            for event_id, kind, data in batch.events:
                yield event_id, kind, data
                after = event_id
            if batch.final is not None:
                yield None, "end", batch.final
                return
            if not batch.events and not await live.wait(seen, HEARTBEAT_SECONDS):
                yield None, "heartbeat", {}


def _resume_from(after: int | None, last_event_id: str | None) -> int:
    if after is not None:
        return after
    if last_event_id is None or not last_event_id.strip():
        return 0
    if not last_event_id.strip().isdigit():
        detail = [
            {
                "loc": ["header", "last-event-id"],
                "msg": "an event id is written in decimal digits only",
                "type": "value_error",
            }
        ]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)
    return int(last_event_id)


def _respond(
    request: Request, events_: AsyncIterator[tuple[int | None, str, dict[str, Any]]]
) -> Response:
    if NDJSON in request.headers.get("accept", ""):

        async def lines() -> AsyncIterator[str]:
            async for event_id, kind, data in events_:
                yield json.dumps({"id": event_id, "event": kind, "data": data}) + "\n"

        return StreamingResponse(lines(), media_type=NDJSON)

    async def messages() -> AsyncIterator[ServerSentEvent]:
        async for event_id, kind, data in events_:
            if kind == "heartbeat":
                yield ServerSentEvent(comment="heartbeat")
            else:
                identity = str(event_id) if event_id is not None else None
                yield ServerSentEvent(json.dumps(data), event=kind, id=identity)

    return EventSourceResponse(messages(), ping=HEARTBEAT_SECONDS)


STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}, NDJSON: {}},
        "description": "Server-sent events (or NDJSON with Accept: application/x-ndjson).",
    }
}
AfterQuery = Annotated[
    int | None,
    Query(ge=0, le=2**63 - 1, description="Resume after this event id (as Last-Event-ID)."),
]
LastEventId = Annotated[
    str | None, Header(max_length=20, description="The id of the last event received.")
]


@router.get(
    "/jobs/{job_id}/events",
    response_class=Response,
    responses={
        **STREAM,
        **NOT_FOUND,
        410: {"description": "Events after that id were dropped with old log lines."},
    },
)
def job_events(
    job_id: JobId,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    after: AfterQuery = None,
    last_event_id: LastEventId = None,
) -> Response:
    """A job's events: `status` (each transition, with reason, attempt, host, GPUs), `epoch`
    (the stored record), `log` (trainer lines; owner or admin only), heartbeats, then `end`
    with the final state. Reconnect with Last-Event-ID to resume exactly after it."""
    job = job_or_404(session, job_id)
    start = _resume_from(after, last_event_id)
    if 0 < start < job.events_dropped_upto:
        raise HTTPException(
            status.HTTP_410_GONE,
            f"events of job {job_id} up to {job.events_dropped_upto} were dropped with old log "
            f"lines; re-read GET /jobs/{job_id} and /jobs/{job_id}/logs, then stream again "
            "without Last-Event-ID",
        )
    logs = _may_read_logs(job, user)
    session.close()  # the stream uses short sessions of its own
    return _respond(request, stream(job_id, start, logs))


def _may_read_logs(job: Job, user: User) -> bool:
    return user.is_admin or job.owner_id == user.id


@router.get("/events", response_class=Response, responses=STREAM)
def all_events(
    request: Request, after: AfterQuery = None, last_event_id: LastEventId = None
) -> Response:
    """Status changes of every job (a dashboard's feed), from after Last-Event-ID or now."""
    start = _resume_from(after, last_event_id)
    if start == 0:
        start = _newest_id()  # a new follower starts from now, not from the first job ever
    return _respond(request, stream(None, start, logs=False))
