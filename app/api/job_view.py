"""A job as the API shows it (`JobOut`), from its row and the rows around it."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.api.schemas import EpochOut, JobOut
from app.core.jobs import last_epoch, queue_position
from app.core.lifecycle import leased_indices
from app.core.models import Job, JobStatus


def job_view(session: Session, job: Job) -> JobOut:
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
        host=job.host,
        gpu_indices=leased_indices(session, job.id),
        queue_position=queue_position(session, job),
        waiting_reason=job.waiting_reason if job.status == JobStatus.queued else None,
        replicas=job.replicas,
        resolved=job.resolved,
        current_epoch=last.epoch if last else None,
        last_metrics=EpochOut.model_validate(last) if last else None,
        cancel_requested=job.cancel_requested_at is not None,
        failure_reason=job.failure_reason,
        failure_message=job.failure_message,
    )
