"""A job's event history (job_events), written in the same transaction as what it reports:
`status` by app/core/lifecycle.py at each transition, `epoch` and `log` by a run's writes
(worker/runs.py). Read in `position` order (the order they committed in) by the event
streams (app/api/events.py), which send the position as the event's id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from app.core.db import new_row, table_of
from app.core.models import TERMINAL_STATUSES, Job, JobEvent

LOG_LINES_PER_EVENT = 200
MESSAGE_CHARS = 2000


def status(session: Session, job_id: int, new_status: str, **fields: Any) -> None:
    """A transition to `new_status` (with what explains it: reason, attempt, host, gpus)."""
    data = _status_data(new_status, fields)
    session.add(JobEvent(job_id=job_id, kind="status", data=data, line_count=0))


def _status_data(new_status: str, fields: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"status": str(new_status)}
    for name, value in fields.items():
        if value is not None:
            data[name] = str(value)[:MESSAGE_CHARS] if isinstance(value, str) else value
    return data


def status_now(session: Session, job_id: int, new_status: str, at: datetime) -> None:
    """`status` with nothing more to say, inserted at once by a prebuilt statement instead
    of at the next flush (a submission's path: the ORM's flush cost it more)."""
    data = _status_data(new_status, {})
    row = new_row(_EVENTS, job_id=job_id, kind="status", data=data, created_at=at)
    session.execute(_INSERT_EVENT, row)


_EVENTS = table_of(JobEvent)
_INSERT_EVENT = insert(_EVENTS)


def epoch(session: Session, job_id: int, record: dict[str, Any]) -> None:
    session.add(JobEvent(job_id=job_id, kind="epoch", data=record, line_count=0))


def log(session: Session, job_id: int, attempt: int, lines: list[str]) -> None:
    """Trainer log lines, at most LOG_LINES_PER_EVENT per event."""
    for start in range(0, len(lines), LOG_LINES_PER_EVENT):
        chunk = lines[start : start + LOG_LINES_PER_EVENT]
        data = {"attempt": attempt, "lines": chunk}
        session.add(JobEvent(job_id=job_id, kind="log", data=data, line_count=len(chunk)))


def drop_log_lines(session: Session, job_id: int, kept: int) -> None:
    """The job keeps only its last `kept` log lines: drop its oldest log events (whole ones)
    while the rest still hold all `kept`, and remember the newest position dropped (a stream
    that resumes before it would miss lines: 410). A job's log events are written one batch
    at a time (each under its row lock), so their ids are in the order they committed in."""
    rows = session.execute(
        select(JobEvent.id, JobEvent.position, JobEvent.line_count)
        .where(JobEvent.job_id == job_id, JobEvent.kind == "log")
        .order_by(JobEvent.id)
    ).all()
    held = sum(count for _, _, count in rows)
    newest_id = newest_position = 0
    for event_id, position, count in rows:
        if held - count < kept:
            break
        held -= count
        newest_id, newest_position = event_id, max(newest_position, position or 0)
    if newest_id:
        session.execute(
            delete(JobEvent).where(
                JobEvent.job_id == job_id, JobEvent.kind == "log", JobEvent.id <= newest_id
            )
        )
        session.execute(
            update(Job).where(Job.id == job_id).values(events_dropped_upto=newest_position)
        )


def after(
    session: Session, job_id: int | None, after_id: int, limit: int = 500, logs: bool = True
) -> list[JobEvent]:
    """Events with positions above `after_id`, oldest first: of one job (without its log
    lines unless `logs`), or (None) status changes of every job."""
    query = select(JobEvent).where(JobEvent.position > after_id)
    query = (
        query.where(JobEvent.job_id == job_id) if job_id else query.where(JobEvent.kind == "status")
    )
    if not logs:  # left out here, not after the limit: a page of logs would hide the rest
        query = query.where(JobEvent.kind != "log")
    # populate_existing: a session that wrote an event holds it with no position yet (the
    # database sets it at commit); the row read here replaces that stale copy.
    query = query.order_by(JobEvent.position).limit(limit).execution_options(populate_existing=True)
    return list(session.scalars(query))


def newest_id(session: Session) -> int:
    """The newest event's position: a stream that starts now sends what comes after it."""
    return int(session.scalar(select(func.max(JobEvent.position))) or 0)


def is_terminal(data: dict[str, Any]) -> bool:
    return data.get("status") in TERMINAL_STATUSES
