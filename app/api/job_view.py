"""Jobs as the API shows them (`JobOut`), from their rows and the rows around them: a page
of any length costs the same few queries (owners, leases, last epochs, queue places)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.api.schemas import EpochOut, JobOut
from app.core.jobs import last_epochs, queue_positions
from app.core.lifecycle import leased_indices_of
from app.core.models import Epoch, Job, JobStatus


def job_view(session: Session, job: Job) -> JobOut:
    return job_views(session, [job])[0]


def job_views(session: Session, jobs: list[Job]) -> list[JobOut]:
    # GPUs are leased from placement to the end of the run; epochs come from a run (whose
    # claim made the attempt 1 or more). A new submission has neither: no query for it.
    holding = [job.id for job in jobs if job.status in (JobStatus.placed, JobStatus.running)]
    leases = leased_indices_of(session, holding)
    last = last_epochs(session, [job.id for job in jobs if job.attempt > 0])
    places = queue_positions(session, jobs)
    return [
        _view(job, leases.get(job.id, []), last.get(job.id), places.get(job.id)) for job in jobs
    ]


def _view(job: Job, gpus: list[int], last: Epoch | None, place: int | None) -> JobOut:
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
        gpu_indices=gpus,
        queue_position=place,
        waiting_reason=job.waiting_reason if job.status == JobStatus.queued else None,
        replicas=job.replicas,
        resolved=job.resolved,
        current_epoch=last.epoch if last is not None else None,
        last_metrics=EpochOut.model_validate(last) if last is not None else None,
        cancel_requested=job.cancel_requested_at is not None,
        failure_reason=job.failure_reason,
        failure_message=job.failure_message,
    )
