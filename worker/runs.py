"""What a run writes while it trains: its start, its epochs, its heartbeat. Each write is fenced
by the attempt number (`lifecycle.owned_by`): a stale run is refused.

A run owns its job only while `jobs.attempt` equals the attempt it claimed and the job is
`running`, so a second delivery, a requeue or an operator's cancel can never be overwritten
by a run that lost the job. The run's end (finish, requeue) is a status change, made by
app/core/lifecycle.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.core import events, lifecycle
from app.core.db import rows_changed
from app.core.lifecycle import owned_by
from app.core.logs import clean_line
from app.core.models import EPOCH_METRICS, Epoch, Job, LogLine, utcnow

# Fields of the trainer's `started` event kept as the job's `resolved`.
RESOLVED_FIELDS = (
    "bn_momentum",
    "weight_decay",
    "precision",
    "params",
    "global_batch",
    "steps_per_epoch",
)


def record_started(session: Session, job_id: int, attempt: int, event: dict[str, Any]) -> bool:
    """The trainer started: its replica count and what it resolved (GET /jobs/{id} shows it)."""
    resolved = {key: event[key] for key in RESOLVED_FIELDS if key in event}
    result = session.execute(
        update(Job)
        .where(owned_by(job_id, attempt))
        .values(replicas=int(event.get("replicas") or 0), resolved=resolved, heartbeat_at=utcnow())
    )
    session.commit()
    return rows_changed(result) == 1


def record_epoch(session: Session, job_id: int, attempt: int, event: dict[str, Any]) -> bool:
    """Store one epoch once. A replay of a stored epoch changes nothing; an epoch retrained by
    a later attempt (the earlier one died before its checkpoint) replaces the older record."""
    owned = session.execute(
        update(Job).where(owned_by(job_id, attempt)).values(heartbeat_at=utcnow())
    )
    if rows_changed(owned) != 1:
        session.rollback()
        return False
    values = {name: event.get(name) for name in EPOCH_METRICS}
    values.update(job_id=job_id, epoch=int(event["epoch"]), attempt=attempt, recorded_at=utcnow())
    insert = (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert
    statement = insert(Epoch).values(**values)
    if event.get("replayed"):
        statement = statement.on_conflict_do_nothing(index_elements=["job_id", "epoch"])
    else:
        statement = statement.on_conflict_do_update(
            index_elements=["job_id", "epoch"],
            set_={name: statement.excluded[name] for name in (*EPOCH_METRICS, "attempt")},
            where=Epoch.attempt < statement.excluded.attempt,
        )
    stored = session.execute(statement.returning(Epoch.epoch)).first()
    if stored is not None:  # not the replay of an epoch already stored
        record = {name: values[name] for name in EPOCH_METRICS}
        events.epoch(session, job_id, {"epoch": values["epoch"], "attempt": attempt, **record})
    session.commit()
    return True


def heartbeat(session: Session, job_id: int, attempt: int) -> tuple[bool, bool]:
    """(still owned, cancel requested)."""
    result = session.execute(
        update(Job)
        .where(owned_by(job_id, attempt))
        .values(heartbeat_at=utcnow())
        .returning(Job.cancel_requested_at)
    )
    row = result.first()
    session.commit()
    if row is None:
        return False, False
    return True, row[0] is not None


def append_log(
    session: Session, job_id: int, attempt: int, lines: list[str], max_lines: int
) -> bool:
    """Store a batch of the run's log lines, keeping at most `max_lines` per job: the oldest
    go and `jobs.log_dropped` counts them. Fenced by the attempt number only (not by the
    running status), so the last lines of a run that just ended are kept; a run whose job has
    moved on to another attempt is refused (False)."""
    counted = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt)
        .values(log_lines=Job.log_lines + len(lines))
        .returning(Job.log_lines, Job.log_dropped)
    ).first()
    if counted is None:
        session.rollback()
        return False
    cleaned = [clean_line(line) for line in lines]
    session.execute(
        insert(LogLine), [{"job_id": job_id, "attempt": attempt, "line": line} for line in cleaned]
    )
    events.log(session, job_id, attempt, cleaned)
    total, dropped = counted
    excess = total - dropped - max_lines
    if excess > 0:
        # The id of the newest line to drop; everything of this job up to it goes.
        cutoff = session.scalar(
            select(LogLine.id)
            .where(LogLine.job_id == job_id)
            .order_by(LogLine.id)
            .offset(excess - 1)
            .limit(1)
        )
        if cutoff is not None:
            gone = session.execute(
                delete(LogLine).where(LogLine.job_id == job_id, LogLine.id <= cutoff)
            )
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(log_dropped=Job.log_dropped + rows_changed(gone))
            )
            events.drop_log_lines(session, job_id, kept=total - dropped - rows_changed(gone))
    session.commit()
    return True


def lose_killed_run(
    session: Session, job_id: int, attempt: int, why: str, max_lost_runs: int
) -> bool:
    """The run's trainer was SIGKILLed and Settings.retry_killed_runs says to try again:
    back to the queue as a lost run (failed worker_lost once max_lost_runs are reached)."""
    job = session.get(Job, job_id)
    if job is None or job.attempt != attempt:
        return False
    lifecycle.lose_run(session, job, why, max_lost_runs)
    session.commit()
    return True
