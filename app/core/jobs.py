"""Reading jobs and epochs: lookups, listings, the queue order. State changes are in
app/core/lifecycle.py."""

from __future__ import annotations

from sqlalchemy import ColumnElement, UnaryExpression, func, select
from sqlalchemy.orm import Session

from app.core.models import Epoch, Job, JobStatus, User

# The order in which queued jobs are considered for a placement: priority, then submission.
QUEUE_ORDER: tuple[UnaryExpression[int], ...] = (Job.priority.desc(), Job.id.asc())


def queued_in_order(session: Session) -> list[Job]:
    """Jobs waiting for a placement, in QUEUE_ORDER."""
    return list(
        session.scalars(select(Job).where(Job.status == JobStatus.queued).order_by(*QUEUE_ORDER))
    )


def _ahead_of(job: Job) -> ColumnElement[bool]:
    """Queued jobs that QUEUE_ORDER puts before `job`."""
    return (Job.priority > job.priority) | ((Job.priority == job.priority) & (Job.id < job.id))


def queue_position(session: Session, job: Job) -> int | None:
    """1-based place among the jobs waiting for a placement; None once placed."""
    if job.status != JobStatus.queued:
        return None
    ahead = session.scalar(
        select(func.count()).select_from(Job).where(Job.status == JobStatus.queued, _ahead_of(job))
    )
    return int(ahead or 0) + 1


def job_for_key(session: Session, owner: User, idempotency_key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key)
    )


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(
    session: Session, status: JobStatus | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    jobs = session.scalars(query.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    return list(jobs), total


def list_epochs(session: Session, job_id: int) -> list[Epoch]:
    return list(session.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)))


def last_epoch(session: Session, job_id: int) -> Epoch | None:
    return session.scalar(
        select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch.desc()).limit(1)
    )
