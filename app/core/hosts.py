"""Queries on worker hosts and their GPUs, shared by the API and the scheduler."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.models import GpuLease, Host, Job, utcnow


def live_hosts(session: Session, settings: Settings, now: datetime) -> list[Host]:
    """Hosts whose worker reported within the host timeout."""
    cutoff = now - timedelta(seconds=settings.host_timeout_seconds)
    return list(
        session.scalars(select(Host).where(Host.last_heartbeat >= cutoff).order_by(Host.name))
    )


def all_hosts(session: Session) -> list[Host]:
    return list(session.scalars(select(Host).order_by(Host.name)))


def largest_host(hosts: list[Host]) -> Host | None:
    return max(hosts, key=lambda h: (len(h.gpus), h.name), default=None)


def too_few_gpus(hosts: list[Host], need: int) -> str | None:
    """Why no host can ever run a job needing `need` GPUs, or None if one can."""
    largest = largest_host(hosts)
    if largest is None or len(largest.gpus) >= need:
        return None
    return f"needs {need} GPUs on one host; the largest host {largest.name} has {len(largest.gpus)}"


def active_leases(session: Session) -> list[GpuLease]:
    return list(session.scalars(select(GpuLease).where(GpuLease.released_at.is_(None))))


def holders(session: Session) -> dict[tuple[str, int], Job]:
    """(host, GPU index) -> the job holding it."""
    leases = active_leases(session)
    jobs = {
        job.id: job
        for job in session.scalars(select(Job).where(Job.id.in_({x.job_id for x in leases})))
    }
    return {(lease.host, lease.gpu_index): jobs[lease.job_id] for lease in leases}


def release_leases(session: Session, job_id: int) -> None:
    """End the job's active leases (the caller commits). Only once its trainer is gone, or
    when it never started one."""
    session.execute(
        update(GpuLease)
        .where(GpuLease.job_id == job_id, GpuLease.released_at.is_(None))
        .values(released_at=utcnow())
    )


def leased_indices(session: Session, job_id: int, attempt: int | None = None) -> list[int]:
    """GPU indices the job holds now (only those leased to `attempt`, when given)."""
    query = select(GpuLease.gpu_index).where(
        GpuLease.job_id == job_id, GpuLease.released_at.is_(None)
    )
    if attempt is not None:
        query = query.where(GpuLease.attempt == attempt)
    return list(session.scalars(query.order_by(GpuLease.gpu_index)))
