"""Repairs from the database's point of view: lost hosts, lost messages, orphaned runs.

The broker only carries "run job N"; these checks make sure every job the database holds
reaches an end even when a message or a whole worker is lost. The state changes themselves
are app/core/lifecycle.py's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import lifecycle
from app.core.config import Settings
from app.core.hosts import live_hosts
from app.core.models import Host, Job, JobStatus, utcnow
from worker.procfs import boot_time, trainers_in
from worker.scheduler import Placement

log = logging.getLogger(__name__)


def reconcile(session: Session, settings: Settings) -> list[Placement]:
    """Requeue runs that went silent; unplace or re-send placed jobs whose message went
    missing. Returns the placements whose message must be sent again.

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
        stopped = not _outlived(live.get(job.host or ""), job, settings)
        why = f"its run on {job.host} stopped reporting" + ("" if stopped else " (host up)")
        lifecycle.lose_run(session, job, why, settings.max_lost_runs, host_stopped=stopped)
    stale = now - timedelta(seconds=settings.dispatch_timeout_seconds)
    for job in session.scalars(select(Job).where(Job.status == JobStatus.placed)):
        host = live.get(job.host or "")
        if host is None:
            lifecycle.unplace(session, job)
        elif job.placed_at is not None and job.placed_at < stale:
            job.placed_at = now  # not a state change: the clock for the next re-send
            resend.append(Placement(job.id, host.name, host.queue, ()))
    session.commit()
    return resend


def _outlived(host: Host | None, job: Job, settings: Settings) -> bool:
    """Whether `host` kept heartbeating well after `job`'s run went silent. Only then did the
    run end for another reason than its host stopping (it could not reach the database, its
    supervisor stopped it), and it is not counted as lost.

    Being live is not enough: the host's heartbeat and the run's are written by separate
    loops, so a host killed along with its run may have reported a moment after the run's
    last heartbeat, and is still live for that moment after the run counts as silent.
    """
    if host is None or job.heartbeat_at is None:
        return False
    margin = timedelta(seconds=settings.host_timeout_seconds / 2)
    return host.last_heartbeat - job.heartbeat_at > margin


def recover_own_orphans(session: Session, settings: Settings) -> None:
    """At worker start: runs this host still shows as running belong to a predecessor that
    died. Make sure their trainers are gone, then requeue them."""
    orphans = list(
        session.scalars(
            select(Job).where(Job.host == settings.worker_name, Job.status == JobStatus.running)
        )
    )
    booted = boot_time()
    for job in orphans:
        kill_trainers_in(settings.job_dir(job.id))
        # Counted only if the machine restarted since the run's last heartbeat; a worker
        # process that crashed (or was killed) on a machine that kept running is not a lost
        # host.
        last = job.heartbeat_at or job.started_at
        rebooted = booted is None or last is None or last.timestamp() < booted
        why = f"worker on {settings.worker_name} restarted" + (
            " after the machine rebooted" if rebooted else ""
        )
        lifecycle.lose_run(session, job, why, settings.max_lost_runs, host_stopped=rebooted)
    session.commit()


def kill_trainers_in(job_dir: Path) -> None:
    """SIGKILL the process group of any trainer still running in `job_dir`."""
    for process in trainers_in(job_dir):
        if process.pgid == os.getpgrp():  # never our own group, whatever its command line
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pgid, signal.SIGKILL)
            log.warning("killed orphaned trainer %s in %s", process.pid, job_dir)
