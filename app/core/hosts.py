"""Reading worker hosts and their GPUs, for the API and the scheduler."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from typing import Any, Literal
from weakref import WeakKeyDictionary

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, joinedload

from app.core.config import Settings
from app.core.lifecycle import active_leases
from app.core.models import Gpu, Host, Job


def live_hosts(session: Session, settings: Settings, now: datetime) -> list[Host]:
    """Hosts whose worker reported within the host timeout."""
    cutoff = now - timedelta(seconds=settings.host_timeout_seconds)
    # Their GPUs in the same query (a join): every caller counts or walks them.
    live = select(Host).where(Host.last_heartbeat >= cutoff).order_by(Host.name)
    return list(session.scalars(live.options(joinedload(Host.gpus))).unique())


def all_hosts(session: Session) -> list[Host]:
    return list(session.scalars(select(Host).order_by(Host.name)))


def largest_host(hosts: list[Host]) -> Host | None:
    return max(hosts, key=lambda h: (len(h.gpus), h.name), default=None)


def too_few_gpus(hosts: list[Host], need: int) -> str | None:
    """Why no host can ever run a job needing `need` GPUs, or None if one can."""
    largest = largest_host(hosts)
    if largest is None:
        return None
    return _too_few(largest.name, len(largest.gpus), need)


def too_few_live_gpus(session: Session, settings: Settings, now: datetime, need: int) -> str | None:
    """too_few_gpus of the live hosts, as one aggregate query: a submission checks it, and
    loading every host with its GPUs was a sixth of a submission's time.

    What lets a job in is remembered for ENOUGH_REMEMBERED_SECONDS (per database): no live
    host yet (the job waits for one), or the largest one's GPUs. A sweep submitting hundreds
    of jobs a second asks the same question each time, and the query was a fifteenth of a
    submission's time. Were the hosts to change meanwhile, a job let in waits for one that
    can run it, as a job submitted a moment before the change would. A refusal is always
    read afresh."""
    engine = session.get_bind()
    remembered = _admitting.get(engine)
    if remembered is not None:
        since, gpus = remembered
        if need <= gpus and time.monotonic() - since < ENOUGH_REMEMBERED_SECONDS:
            return None
    cutoff = now - timedelta(seconds=settings.host_timeout_seconds)
    counts = session.execute(_GPUS_OF_LIVE_HOSTS, {"cutoff": cutoff}).all()
    # Picked here, as largest_host picks: a database's collation may order names otherwise.
    largest = max(counts, key=lambda row: (row[1], row[0]), default=None)
    why = None if largest is None else _too_few(largest[0], largest[1], need)
    if why is None:
        _admitting[engine] = (time.monotonic(), math.inf if largest is None else largest[1])
    return why


ENOUGH_REMEMBERED_SECONDS = 1.0
# Engine -> (when, on time.monotonic(); the most GPUs a job may need to be let in).
_admitting: WeakKeyDictionary[Any, tuple[float, float]] = WeakKeyDictionary()


# Built once: every submission of a GPU job runs it.
_GPUS_OF_LIVE_HOSTS = (
    select(Host.name, func.count(Gpu.id))
    .outerjoin(Gpu, Gpu.host == Host.name)
    .where(Host.last_heartbeat >= bindparam("cutoff"))
    .group_by(Host.name)
)


def needs_gpus(need: int | str) -> str:
    """How each reason a GPU job waits for a host begins; the rest depends on the hosts.
    (The scheduler writes it in SQL too, with the job's GPUs for `need`.)"""
    return f"needs {need} GPUs on one host; "


def _too_few(name: str, gpus: int, need: int) -> str | None:
    if gpus >= need:
        return None
    return f"{needs_gpus(need)}the largest host {name} has {gpus}"


GpuState = Literal["free", "leased", "foreign"]
GPU_STATES: tuple[GpuState, ...] = ("free", "leased", "foreign")


def gpu_state(gpu: Gpu, holder: Job | None) -> GpuState:
    """Leased to a job, busy with a process Trainyard does not own, or free."""
    return "leased" if holder else "foreign" if gpu.foreign_pids else "free"


def holders(session: Session) -> dict[tuple[str, int], Job]:
    """(host, GPU index) -> the job holding it."""
    leases = active_leases(session)
    jobs = {
        job.id: job
        for job in session.scalars(select(Job).where(Job.id.in_({x.job_id for x in leases})))
    }
    return {(lease.host, lease.gpu_index): jobs[lease.job_id] for lease in leases}
