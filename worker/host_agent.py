"""The worker's background duties: report this host and its GPUs, schedule, reconcile."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.disk import keep_reserve
from worker.broker import RUN_JOB_TASK
from worker.gpus import discover
from worker.inventory import heartbeat_host, register_host
from worker.procfs import pids_in_process_groups
from worker.reconcile import reconcile, recover_own_orphans
from worker.scheduler import Placement, schedule
from worker.supervisor import TRAINER_PGIDS

log = logging.getLogger(__name__)


class HostAgent(threading.Thread):
    """Registers the host, then heartbeats, schedules and reconciles until `stop` is set.

    Every worker runs one; scheduling passes are serialised by the database (an advisory
    lock on PostgreSQL, the write lock on SQLite), so several hosts can share the work.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: Callable[[], Session],
        celery: Celery,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="trainyard-host-agent", daemon=True)
        self.settings = settings
        self.session_factory = session_factory
        self.celery = celery
        self.stop = stop
        self.last_pass_seconds: float | None = None

    def run(self) -> None:
        registered = False
        next_heartbeat = 0.0
        while not self.stop.is_set():
            # Nothing may end this loop but shutdown: without it the host goes silent, its
            # queue is never scheduled, and its runs look lost to every other host.
            try:
                if not registered:
                    self.register()
                    registered = True
                    next_heartbeat = time.monotonic() + self.settings.heartbeat_seconds
                if time.monotonic() >= next_heartbeat:
                    self.heartbeat()
                    next_heartbeat = time.monotonic() + self.settings.heartbeat_seconds
                self.schedule_once()
            except SQLAlchemyError:
                # A scheduling race lost or the database briefly away: try again next tick.
                log.warning("host agent: database pass failed; retrying", exc_info=True)
            except Exception:
                log.exception("host agent: pass failed; retrying")
            self.stop.wait(self.settings.schedule_seconds)

    def register(self) -> None:
        gpus, source = discover(self.settings.simulated_gpus)
        with self.session_factory() as session:
            recover_own_orphans(session, self.settings)
            register_host(session, self.settings, gpus, source)
        log.info("host %s registered: %d GPUs (%s)", self.settings.worker_name, len(gpus), source)

    def heartbeat(self) -> None:
        gpus, _ = discover(self.settings.simulated_gpus)
        own = pids_in_process_groups(set(TRAINER_PGIDS))
        with self.session_factory() as session:
            heartbeat_host(session, self.settings, gpus, own, self.last_pass_seconds)
        keep_reserve(self.settings.data_dir)  # put back once a full disk has room again

    def schedule_once(self) -> None:
        with self.session_factory() as session:
            resend = reconcile(session, self.settings)
        started = time.monotonic()
        with self.session_factory() as session:
            placed = schedule(session, self.settings)
        self.last_pass_seconds = time.monotonic() - started  # reported with the heartbeat
        for placement in [*resend, *placed]:
            self.send(placement)

    def send(self, placement: Placement) -> None:
        log.info(
            "job %s -> host %s GPUs %s", placement.job_id, placement.host, placement.gpu_indices
        )
        self.celery.send_task(RUN_JOB_TASK, args=[placement.job_id], queue=placement.queue)
