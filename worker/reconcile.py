"""Repairs from the database's point of view: lost hosts, lost messages, orphaned runs.

The broker only carries "run job N"; these checks make sure every job the database holds
reaches an end even when a message or a whole worker is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import rows_changed
from app.core.hosts import live_hosts, release_leases
from app.core.models import FailureReason, Job, JobStatus, utcnow
from worker.scheduler import Placement

log = logging.getLogger(__name__)


def reconcile(session: Session, settings: Settings) -> list[Placement]:
    """Requeue runs that went silent; unplace or re-send jobs whose message went missing.
    Returns the placements whose message must be sent again.

    A run is judged by its own heartbeat (its supervisor writes it every second), not by its
    host's: a supervisor that cannot reach the database stops its trainer after half the
    host timeout, so a run silent for a whole host timeout is certainly gone.
    """
    now = utcnow()
    live = {host.name: host for host in live_hosts(session, settings, now)}
    resend: list[Placement] = []
    silent = now - timedelta(seconds=settings.host_timeout_seconds)
    for job in session.scalars(
        select(Job).where(Job.status == JobStatus.running, Job.heartbeat_at < silent)
    ):
        lose_run(session, settings, job, f"its run on {job.worker} stopped reporting")
    stale = now - timedelta(seconds=settings.dispatch_timeout_seconds)
    for job in session.scalars(
        select(Job).where(Job.host.is_not(None), Job.status == JobStatus.queued)
    ):
        host = live.get(job.host or "")
        if host is None:
            _unplace(session, job)
        elif job.placed_at is not None and job.placed_at < stale:
            job.placed_at = now
            resend.append(Placement(job.id, host.name, host.queue, ()))
    session.commit()
    return resend


def lose_run(session: Session, settings: Settings, job: Job, why: str) -> None:
    """The run's worker is gone (and so its trainer): requeue the job to resume from its
    checkpoint, or fail it once `max_attempts` runs were lost (clean stops do not count)."""
    lost = job.lost_runs + 1
    values: dict[str, object] = (
        {
            "status": JobStatus.failed,
            "finished_at": utcnow(),
            "lost_runs": lost,
            "failure_reason": FailureReason.worker_lost,
            "failure_message": f"{why}; {lost} runs lost, giving up",
        }
        if lost >= settings.max_attempts
        else {
            "status": JobStatus.queued,
            "host": None,
            "placed_at": None,
            "worker": None,
            "lost_runs": lost,
        }
    )
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.attempt == job.attempt, Job.status == JobStatus.running)
        .values(**values)
    )
    if rows_changed(result) == 1:
        release_leases(session, job.id)
        log.warning("job %s attempt %s lost (%s): %s", job.id, job.attempt, why, values["status"])


def _unplace(session: Session, job: Job) -> None:
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.queued, Job.host == job.host)
        .values(host=None, placed_at=None)
    )
    if rows_changed(result) == 1:
        release_leases(session, job.id)


def recover_own_orphans(session: Session, settings: Settings) -> None:
    """At worker start: runs this host still shows as running belong to a predecessor that
    died. Make sure their trainers are gone, then requeue them."""
    orphans = list(
        session.scalars(
            select(Job).where(Job.host == settings.worker_name, Job.status == JobStatus.running)
        )
    )
    for job in orphans:
        kill_trainers_of(settings.job_dir(job.id))
        lose_run(session, settings, job, f"worker on {settings.worker_name} restarted")
    session.commit()


def kill_trainers_of(job_dir: Path) -> None:
    """SIGKILL the process group of any trainer still running in `job_dir`."""
    marker = str(job_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [part.decode(errors="replace") for part in cmdline]
        if "worker.training" in args and marker in args:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)
