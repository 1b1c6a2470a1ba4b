"""The worker's Celery application: the broker configuration plus the task module.

Start it with `trainyard worker`, which also names the worker after its host and leaves out
Celery's gossip, mingle and heartbeat. `celery -A worker.celery_app worker` works too: the
configuration makes it consume this host's queue with a threads pool. It never imports
TensorFlow, which lives only in the trainer's child process.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutting_down

from app.core.config import Settings, get_settings, make_files_private
from app.core.db import get_session_factory
from worker.broker import make_celery
from worker.gpus import discover

log = logging.getLogger(__name__)

make_files_private()  # also when started as `celery -A worker.celery_app worker`
celery = make_celery(get_settings())
celery.conf.include = ["worker.tasks"]


def default_concurrency(settings: Settings) -> int:
    """Threads enough for every job this host can run at once: one per GPU, plus its CPU job
    slots (the scheduler decides what runs; this only has to be large enough)."""
    if settings.worker_concurrency:
        return settings.worker_concurrency
    gpus, _ = discover(settings.simulated_gpus)
    return max(1, len(gpus) + settings.cpu_job_slots)


celery.conf.worker_concurrency = default_concurrency(get_settings())

# Set when the worker begins to shut down: running supervisors stop their trainers and
# give their jobs back to the queue instead of holding the shutdown for hours.
shutdown_event = threading.Event()


@worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    shutdown_event.set()


@worker_init.connect
def _refuse_a_second_worker_of_this_host(**_: Any) -> None:
    from worker.inventory import live_namesake

    if why := live_namesake(get_session_factory(), get_settings()):
        log.critical("refusing to start: %s", why)
        # SystemExit passes through Celery's signal dispatch (it catches only Exception).
        raise SystemExit(f"trainyard worker: {why}")


@worker_ready.connect
def _start_host_agent(**_: Any) -> None:
    from app.core.heap import freeze_startup_objects
    from worker.host_agent import HostAgent

    HostAgent(get_settings(), get_session_factory(), celery, shutdown_event).start()
    freeze_startup_objects()  # its scheduling passes then pause for their own garbage only
