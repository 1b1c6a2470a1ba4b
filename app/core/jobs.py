"""Queries on jobs and epochs used by the API: routes stay thin and call these."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.schemas import EpochOut, JobOut, JobSpec
from app.core.db import rows_changed
from app.core.hosts import leased_indices, release_leases
from app.core.models import (
    TERMINAL_STATUSES,
    Epoch,
    FailureReason,
    Job,
    JobStatus,
    User,
    utcnow,
)


def create_job(
    session: Session, spec: JobSpec, owner: User, idempotency_key: str | None = None
) -> Job:
    """Store the job as queued. With a key that this owner already used, the job of that
    first submission is returned instead (also when two such requests race)."""
    job = Job(
        name=spec.name,
        owner_id=owner.id,
        priority=spec.priority,
        status=JobStatus.queued,
        spec=spec.model_dump(),
        attempt=0,
        idempotency_key=idempotency_key,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        earlier = job_for_key(session, owner, idempotency_key) if idempotency_key else None
        if earlier is None:
            raise
        return earlier
    return job


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


def active_jobs_of(session: Session, user: User) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner_id == user.id)
            .where(Job.status.in_([JobStatus.queued, JobStatus.running]))
        )
        or 0
    )


def queue_position(session: Session, job: Job) -> int | None:
    """1-based place among the jobs waiting for a placement (priority, then age)."""
    if job.status != JobStatus.queued or job.host is not None:
        return None
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.status == JobStatus.queued, Job.host.is_(None))
        .where((Job.priority > job.priority) | ((Job.priority == job.priority) & (Job.id < job.id)))
    )
    return int(ahead or 0) + 1


def list_epochs(session: Session, job_id: int) -> list[Epoch]:
    return list(session.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)))


def last_epoch(session: Session, job_id: int) -> Epoch | None:
    return session.scalar(
        select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch.desc()).limit(1)
    )


def to_out(session: Session, job: Job) -> JobOut:
    last = last_epoch(session, job.id)
    return JobOut(
        id=job.id,
        name=job.name,
        owner=job.owner.name if job.owner else None,
        priority=job.priority,
        status=JobStatus(job.status),
        spec=job.spec,
        attempt=job.attempt,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        worker=job.worker,
        host=job.host,
        gpu_indices=leased_indices(session, job.id),
        queue_position=queue_position(session, job),
        waiting_reason=job.waiting_reason if job.status == JobStatus.queued else None,
        replicas=job.replicas,
        current_epoch=last.epoch if last else None,
        last_metrics=EpochOut.model_validate(last) if last else None,
        cancel_requested=job.cancel_requested_at is not None,
        failure_reason=job.failure_reason,
        failure_message=job.failure_message,
    )


def request_cancel(session: Session, job: Job) -> bool:
    """Cancel a queued job at once, or flag a running one for its supervisor.

    Returns False when the job had already ended. Both updates are conditional on the
    status read, so a cancel racing a claim or a finish never overwrites either.
    """
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.queued)
        .values(
            status=JobStatus.cancelled,
            finished_at=now,
            cancel_requested_at=now,
            failure_reason=FailureReason.cancelled,
            failure_message="cancelled before it started",
        )
    )
    if rows_changed(queued) == 1:
        release_leases(session, job.id)  # placed but not yet started: nothing holds them
    else:
        session.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.status == JobStatus.running,
                Job.cancel_requested_at.is_(None),
            )
            .values(cancel_requested_at=now)
        )
    session.commit()
    session.refresh(job)
    return job.status not in TERMINAL_STATUSES or job.failure_reason == FailureReason.cancelled
