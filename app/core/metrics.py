"""Figures about the whole box, read from the system of record when Prometheus scrapes: so
they are the same whichever API process answers, and include what the workers did."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, case, cast, func, or_, select
from sqlalchemy.orm import Session

from app.core.hosts import GPU_STATES, all_hosts, gpu_state, holders
from app.core.models import Epoch, GpuLease, Host, Job, User

# Buckets in seconds: a queue wait runs from instants to days; an epoch from a second (the
# digits set) to an hour (CIFAR-10 on a CPU).
QUEUE_WAIT_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
EPOCH_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass(frozen=True)
class HistogramCounts:
    """Cumulative counts per upper bound (as Prometheus wants them), the total and the sum."""

    buckets: list[tuple[float, int]]
    count: int
    total: float


def seconds_between(session: Session, start: Any, end: Any) -> ColumnElement[float]:
    """`end - start` in seconds, in SQL, on PostgreSQL and SQLite alike."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.extract("epoch", end - start), Float)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def histogram(
    session: Session,
    value: Any,
    buckets: Sequence[float],
    *where: ColumnElement[bool],
) -> HistogramCounts:
    """One pass over the rows: how many values fall at or under each bucket."""
    columns = [func.sum(case((value <= bound, 1), else_=0)) for bound in buckets]
    row = session.execute(
        select(*columns, func.count(value), func.coalesce(func.sum(value), 0.0)).where(
            value.is_not(None), *where
        )
    ).one()
    counts = [int(count or 0) for count in row[: len(buckets)]]
    return HistogramCounts(list(zip(buckets, counts, strict=True)), int(row[-2]), float(row[-1]))


def queue_wait(session: Session) -> HistogramCounts:
    """From submission to the start of a job's (latest) run, over every job that started."""
    wait = seconds_between(session, Job.created_at, Job.started_at)
    return histogram(session, wait, QUEUE_WAIT_BUCKETS, Job.started_at.is_not(None))


def epoch_seconds(session: Session) -> HistogramCounts:
    return histogram(session, Epoch.seconds, EPOCH_BUCKETS)


def gpu_seconds_by_user(session: Session, now: datetime) -> dict[str, float]:
    """GPU-seconds every user's jobs have held, from the lease history (a lease still held
    counts up to now)."""
    held = seconds_between(session, GpuLease.leased_at, func.coalesce(GpuLease.released_at, now))
    rows = session.execute(
        select(User.name, func.sum(held))
        .join(Job, Job.id == GpuLease.job_id)
        .join(User, User.id == Job.owner_id)
        .group_by(User.name)
    )
    return {name: float(total or 0.0) for name, total in rows}


def gpu_seconds_since(session: Session, since: datetime, now: datetime) -> dict[str, float]:
    """GPU-seconds every user's jobs held between `since` and `now`: each lease counts only
    its part inside that window."""
    rows = session.execute(
        select(User.name, GpuLease.leased_at, GpuLease.released_at)
        .join(Job, Job.id == GpuLease.job_id)
        .join(User, User.id == Job.owner_id)
        .where(GpuLease.leased_at < now)
        .where(or_(GpuLease.released_at.is_(None), GpuLease.released_at > since))
    )
    held: dict[str, float] = {}
    for name, leased_at, released_at in rows:
        seconds = (min(released_at or now, now) - max(leased_at, since)).total_seconds()
        held[name] = held.get(name, 0.0) + max(seconds, 0.0)
    return held


def gpus_by_state(session: Session) -> dict[tuple[str, str], int]:
    """(host, free | leased | foreign) -> GPUs, as GET /gpus shows them."""
    held = holders(session)
    counts: dict[tuple[str, str], int] = {}
    for host in all_hosts(session):
        for state in GPU_STATES:
            counts[(host.name, state)] = 0
        for gpu in host.gpus:
            counts[(host.name, gpu_state(gpu, held.get((host.name, gpu.index))))] += 1
    return counts


def scheduling_pass_seconds(session: Session) -> dict[str, float]:
    """Each host's last scheduling pass, as its worker reported it."""
    rows = session.execute(select(Host.name, Host.last_pass_seconds))
    return {name: seconds for name, seconds in rows if seconds is not None}
