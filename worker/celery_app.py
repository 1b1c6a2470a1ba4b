"""The worker's Celery application: the shared broker configuration plus the task module.

Start it with `trainyard worker` (or `celery -A worker.celery_app worker`); it never
imports TensorFlow, which lives only in the trainer's child process.
"""

from __future__ import annotations

import threading
from typing import Any

from celery.signals import worker_ready, worker_shutting_down

from app.core.config import get_settings
from app.core.db import get_session_factory
from worker.broker import make_celery

celery = make_celery(get_settings())
celery.conf.include = ["worker.tasks"]

# Set when the worker begins to shut down: running supervisors stop their trainers and
# give their jobs back to the queue instead of holding the shutdown for hours.
shutdown_event = threading.Event()


@worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    shutdown_event.set()


@worker_ready.connect
def _start_host_agent(**_: Any) -> None:
    from worker.host_agent import HostAgent

    HostAgent(get_settings(), get_session_factory(), celery, shutdown_event).start()
