"""Celery configuration and the task name. Only workers use Celery: their scheduling passes
send "run job N" (by task name, `send_task`) to the queue of the host a job was placed on,
and each worker consumes its own host's queue. The API sends nothing; it commits jobs.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.core.config import Settings
from worker.inventory import host_queue

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
        # A broker outage must not stop running trainings: the database owns the job, and a
        # run goes on while Redis restarts (Celery 6 would cancel them by default).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # This host's queue, so that any worker started on this app, `celery -A
        # worker.celery_app worker` included, consumes the jobs placed on this host.
        "task_default_queue": host_queue(settings),
        # Each task only supervises a child process: threads, which share the host agent's
        # record of our trainers' process groups (a forked pool would not).
        "worker_pool": "threads",
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if settings.broker_url.startswith("filesystem://"):
        folder = str(settings.broker_dir)
        config["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            # Exchange bindings; kombu's default is ./control in the current directory.
            "control_folder": str(settings.broker_dir / "control"),
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
