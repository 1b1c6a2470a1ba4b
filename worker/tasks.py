"""Celery tasks: thin, named explicitly, given ids; the work is in worker.supervisor."""

from __future__ import annotations

import logging

from app.core.config import get_settings
from app.core.db import get_session_factory
from worker import supervisor
from worker.broker import RUN_JOB_TASK
from worker.celery_app import celery, shutdown_event

log = logging.getLogger(__name__)


@celery.task(name=RUN_JOB_TASK, acks_late=True, ignore_result=True)
def run_job(job_id: int) -> str:
    """Run job `job_id` if it is still queued; a duplicate delivery is dropped."""
    outcome = supervisor.run_job(get_settings(), get_session_factory(), job_id, shutdown_event)
    if outcome is None:
        return f"job {job_id}: not queued, dropped"
    if outcome.stopped_for_shutdown:
        # Queued again in the database: a scheduling pass places it anew and its next run
        # resumes from the last checkpoint.
        return f"job {job_id}: requeued for shutdown"
    return f"job {job_id}: done"
