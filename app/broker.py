"""The Celery application both sides share: broker configuration and the task names.

The API only sends tasks by name; it never imports the worker's task code.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from app.config import Settings, get_settings

RUN_JOB_TASK = "trainyard.run_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        # The database is the system of record; Celery keeps no results.
        "task_ignore_result": True,
        "result_backend": None,
        # A job's message is acknowledged only once its run is over; a worker that dies
        # mid-run leaves it for redelivery, and the claim in the database drops duplicates.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if settings.broker_url.startswith("filesystem://"):
        folder = str(settings.broker_dir)
        config["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "store_processed": False,
        }
        # The filesystem transport has no fanout: no remote control, gossip or mingle.
        config["worker_enable_remote_control"] = False
    elif settings.broker_url.startswith(("redis://", "rediss://")):
        # Trainings outlast Redis' default one-hour visibility timeout; a redelivery
        # while the first run lives is harmless (the claim refuses it), but needless.
        config["broker_transport_options"] = {"visibility_timeout": 7 * 24 * 3600}
    return config


def make_celery(settings: Settings) -> Celery:
    settings.ensure_dirs()
    celery = Celery("trainyard")
    celery.conf.update(celery_config(settings))
    return celery


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def send_run_job(job_id: int) -> None:
    """Ask some worker to run job `job_id`; call only after the job row is committed."""
    get_celery().send_task(RUN_JOB_TASK, args=[job_id])
