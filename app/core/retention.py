"""Deleting ended jobs: one by one (DELETE /jobs/{id}) or all older than a cut-off
(`trainyard gc`). The rows go through lifecycle.delete_ended; the files follow."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import lifecycle
from app.core.artifacts import artifact_store, job_prefix
from app.core.config import Settings
from app.core.models import TERMINAL_STATUSES, Job


def delete_job(session: Session, settings: Settings, job_id: int) -> bool:
    """Delete an ended job, its epochs, lease history and files (log, model, metrics).
    False when it is not there or still queued, placed or running."""
    if not lifecycle.delete_ended(session, job_id):
        return False
    # After the commit: a crash in between leaves files without a job, never a job whose
    # files are gone. AUTOINCREMENT ids mean no later job is given these keys or folder.
    artifact_store(settings).delete_prefix(job_prefix(job_id))
    shutil.rmtree(settings.job_dir(job_id), ignore_errors=True)
    return True


def ended_before(session: Session, cutoff: datetime) -> list[int]:
    """Ids of jobs that ended before `cutoff`, oldest first."""
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.status.in_(TERMINAL_STATUSES), Job.finished_at < cutoff)
            .order_by(Job.id)
        )
    )


def collect_garbage(
    session: Session, settings: Settings, older_than: timedelta, now: datetime
) -> list[int]:
    """Delete every job that ended more than `older_than` before `now`; returns their ids."""
    return [
        job_id
        for job_id in ended_before(session, now - older_than)
        if delete_job(session, settings, job_id)
    ]
