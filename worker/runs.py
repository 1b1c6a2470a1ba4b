"""Database writes of a run. Each one is fenced by the attempt number: a stale run is refused.

A run owns its job only while `jobs.attempt` equals the attempt it claimed and the job is
`running`; every write below checks exactly that, so a second delivery, a requeue or an
operator's cancel can never be overwritten by a run that lost the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.core.db import rows_changed
from app.core.hosts import release_leases
from app.core.models import EPOCH_METRICS, Epoch, FailureReason, Job, JobStatus, utcnow


@dataclass(frozen=True)
class Claim:
    job_id: int
    attempt: int
    spec: dict[str, Any]


def _owned(job_id: int, attempt: int) -> Any:
    return (Job.id == job_id) & (Job.attempt == attempt) & (Job.status == JobStatus.running)


def claim(session: Session, job_id: int, worker: str) -> Claim | None:
    """queued -> running with attempt + 1, or None when the job is not queued and placed on
    this host (a duplicate delivery, a cancelled job, a message for another host)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued, Job.host == worker)
        .values(
            status=JobStatus.running,
            attempt=Job.attempt + 1,
            started_at=now,
            heartbeat_at=now,
            worker=worker,
            finished_at=None,
            failure_reason=None,
            failure_message=None,
        )
    )
    session.commit()
    if rows_changed(result) != 1:
        return None
    job = session.get(Job, job_id)
    assert job is not None  # just updated under the same id
    session.refresh(job)
    return Claim(job_id=job_id, attempt=job.attempt, spec=dict(job.spec))


def record_started(session: Session, job_id: int, attempt: int, replicas: int) -> bool:
    result = session.execute(
        update(Job).where(_owned(job_id, attempt)).values(replicas=replicas, heartbeat_at=utcnow())
    )
    session.commit()
    return rows_changed(result) == 1


def record_epoch(session: Session, job_id: int, attempt: int, event: dict[str, Any]) -> bool:
    """Store one epoch once. A replay of a stored epoch changes nothing; an epoch retrained by
    a later attempt (the earlier one died before its checkpoint) replaces the older record."""
    owned = session.execute(
        update(Job).where(_owned(job_id, attempt)).values(heartbeat_at=utcnow())
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
    session.execute(statement)
    session.commit()
    return True


def heartbeat(session: Session, job_id: int, attempt: int) -> tuple[bool, bool]:
    """(still owned, cancel requested)."""
    result = session.execute(
        update(Job)
        .where(_owned(job_id, attempt))
        .values(heartbeat_at=utcnow())
        .returning(Job.cancel_requested_at)
    )
    row = result.first()
    session.commit()
    if row is None:
        return False, False
    return True, row[0] is not None


def finish(
    session: Session,
    job_id: int,
    attempt: int,
    status: JobStatus,
    reason: FailureReason | None = None,
    message: str | None = None,
) -> bool:
    """End the run and release its GPUs, in one transaction (the trainer is gone)."""
    result = session.execute(
        update(Job)
        .where(_owned(job_id, attempt))
        .values(
            status=status,
            finished_at=utcnow(),
            failure_reason=reason,
            failure_message=message,
        )
    )
    return _release_if(session, job_id, rows_changed(result) == 1)


def requeue(session: Session, job_id: int, attempt: int) -> bool:
    """Give the job back to the queue (worker shutting down); the next run resumes it."""
    result = session.execute(
        update(Job)
        .where(_owned(job_id, attempt))
        .values(status=JobStatus.queued, heartbeat_at=None, worker=None, host=None, placed_at=None)
    )
    return _release_if(session, job_id, rows_changed(result) == 1)


def _release_if(session: Session, job_id: int, owned: bool) -> bool:
    if owned:
        release_leases(session, job_id)
        session.commit()
    else:
        session.rollback()
    return owned
