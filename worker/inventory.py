"""This host in the database: its registration, heartbeat and GPU readings."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.models import Gpu, Host, utcnow
from worker.gpus import GpuInfo, foreign_pids


def host_queue(settings: Settings) -> str:
    """The Celery queue only this host's worker consumes; the scheduler routes jobs there."""
    return f"{settings.queue}.{settings.worker_name}"


def register_host(session: Session, settings: Settings, gpus: list[GpuInfo], source: str) -> Host:
    """Create or refresh this host's row and replace its GPU list."""
    now = utcnow()
    host = session.get(Host, settings.worker_name)
    if host is None:
        host = Host(name=settings.worker_name)
        session.add(host)
    host.queue = host_queue(settings)
    host.simulated = source == "simulated"
    host.gpu_source = source
    host.cpu_slots = settings.cpu_job_slots
    host.started_at = now
    host.last_heartbeat = now
    session.execute(delete(Gpu).where(Gpu.host == settings.worker_name))
    session.flush()
    for info in gpus:
        session.add(_gpu_row(settings.worker_name, info, set()))
    session.commit()
    return host


def heartbeat_host(
    session: Session,
    settings: Settings,
    gpus: list[GpuInfo],
    own_pids: set[int],
    last_pass_seconds: float | None = None,
) -> None:
    """Refresh the host's heartbeat, its last scheduling pass's duration, and each GPU's
    memory, use and foreign processes."""
    host = session.get(Host, settings.worker_name)
    if host is None:  # removed by an operator: register again
        register_host(session, settings, gpus, "simulated" if settings.simulated_gpus else "nvml")
        return
    host.last_heartbeat = utcnow()
    host.last_pass_seconds = last_pass_seconds
    rows = {row.index: row for row in session.scalars(select(Gpu).where(Gpu.host == host.name))}
    for info in gpus:
        fresh = _gpu_row(host.name, info, own_pids)
        row = rows.get(info.index)
        if row is None:
            session.add(fresh)
            continue
        for column in (
            "name",
            "uuid",
            "memory_total_mib",
            "memory_used_mib",
            "utilization_percent",
            "foreign_pids",
            "updated_at",
        ):
            setattr(row, column, getattr(fresh, column))
    session.commit()


def _gpu_row(host: str, info: GpuInfo, own_pids: set[int]) -> Gpu:
    return Gpu(
        host=host,
        index=info.index,
        name=info.name,
        uuid=info.uuid,
        memory_total_mib=info.memory_total_mib,
        memory_used_mib=info.memory_used_mib,
        utilization_percent=info.utilization_percent,
        foreign_pids=[] if info.simulated else foreign_pids(info, own_pids),
        updated_at=utcnow(),
    )


def live_namesake(session_factory: Callable[[], Session], settings: Settings) -> str | None:
    """Why this worker must not start, when another live worker already uses its host name
    (else None). Two workers under one name would each take the other's runs for orphans of
    a dead predecessor and kill them.

    A fresh heartbeat alone proves nothing (a worker killed a moment ago left one), so this
    watches the row for two heartbeat periods: only a live worker moves it. A host agent
    heartbeats at the first pass due, and passes are `schedule_seconds` apart, so a period
    lasts up to heartbeat_seconds + schedule_seconds (plus the pass itself).
    """
    name = settings.worker_name
    with session_factory() as session:
        seen = session.scalar(select(Host.last_heartbeat).where(Host.name == name))
    if seen is None or utcnow() - seen > timedelta(seconds=settings.host_timeout_seconds):
        return None
    period = settings.heartbeat_seconds + settings.schedule_seconds
    deadline = time.monotonic() + 2 * period + 0.5
    while time.monotonic() < deadline:
        time.sleep(min(0.25, settings.heartbeat_seconds / 4))
        with session_factory() as session:
            latest = session.scalar(select(Host.last_heartbeat).where(Host.name == name))
        if latest is not None and latest != seen:
            return (
                f"a live worker already runs as host {name!r} (its heartbeat moved while this "
                "one waited): stop it, or give this one another TRAINYARD_WORKER_NAME"
            )
    return None
