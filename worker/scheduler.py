"""Placement: which queued job starts next, on which host, with which GPUs.

The rule (the README repeats it): queued jobs are considered by priority (higher first),
then submission order. A job starts as soon as one live host has enough free GPUs for it
(and a CPU slot, for `gpus: 0`). When a job that needs GPUs cannot start, every host it
could ever fit on is reserved for it: no later job of equal or lower priority is placed on
those hosts until it has started. So a 4-GPU job is never starved by a stream of 1-GPU
jobs, at the price of idle GPUs while it waits. Jobs held back only by their owner's GPU
quota reserve nothing.

A pass runs in one transaction; the placements (status and leases) are made by
app/core/lifecycle.py's `place`, all-or-nothing, so two schedulers racing can never lease a
GPU twice (the loser's transaction fails and retries later).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from app.core import lifecycle
from app.core.config import Settings
from app.core.hosts import live_hosts, too_few_gpus
from app.core.jobs import QueuedJob, queued_in_order
from app.core.models import Host, Job, JobStatus, utcnow

# pg_advisory_xact_lock key: one scheduling pass at a time across all workers.
_SCHEDULER_LOCK = 0x7472_6169
# Waiting reasons one pass writes at most. Rewriting a job's row costs 50-80 us on
# PostgreSQL (every index of jobs gets a new entry), so the first pass after a burst of
# 10,000 submissions spent 0.5-0.9 s writing them all while holding the scheduler's lock.
# Half go to the front of the queue, what people watch; half to a sweep that starts where
# this process's last sweep stopped and wraps around, so that while placements keep
# changing the reasons at the front, those further back are still rewritten in turn.
REASONS_PER_PASS = 100
_last_swept: tuple[int, int] | None = None  # (job id, its queue position) the last sweep ended on


@dataclass(frozen=True)
class Placement:
    job_id: int
    host: str
    queue: str
    gpu_indices: tuple[int, ...]


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEDULER_LOCK})


def schedule(session: Session, settings: Settings) -> list[Placement]:
    """One pass: place what can start, note why the rest waits. Commits; returns the
    placements, whose run messages the caller sends."""
    _lock(session)
    now = utcnow()
    hosts = live_hosts(session, settings, now)
    leases = lifecycle.active_leases(session)
    leased = {(lease.host, lease.gpu_index) for lease in leases}
    free: dict[str, list[int]] = {
        host.name: [
            gpu.index
            for gpu in host.gpus
            if (host.name, gpu.index) not in leased and not gpu.foreign_pids
        ]
        for host in hosts
    }
    cpu_busy: dict[str, int] = dict(
        session.execute(  # type: ignore[arg-type]  # Job.host is not NULL here
            select(Job.host, func.count())
            .where(Job.status.in_([JobStatus.placed, JobStatus.running]))
            .where(Job.gpus == 0)
            .group_by(Job.host)
        ).all()
    )
    held: dict[int | None, int] = defaultdict(int)
    gpus_of_job = Counter(lease.job_id for lease in leases)
    for job_id, owner_id in session.execute(
        select(Job.id, Job.owner_id).where(Job.id.in_(gpus_of_job))
    ).all():
        held[owner_id] += gpus_of_job[job_id]

    placements: list[Placement] = []
    reserved: dict[str, int] = {}  # host -> the waiting job it is held for
    # Why a job needing n GPUs (0: a CPU slot) waits, as long as no placement or new
    # reservation changes what the hosts offer. With thousands queued for a few GPUs nearly
    # every job waits for a reason an earlier one found: a lookup, not a search of the hosts.
    known: dict[int, str] = {}
    budget = _ReasonBudget()
    for position, job in enumerate(queued_in_order(session)):
        why = _over_quota(settings, job, held) if job.gpus else None
        if why is None and (why := known.get(job.gpus)) is None:
            outcome = (
                _place_cpu_job(session, job, hosts, cpu_busy, now)
                if job.gpus == 0
                else _place_gpu_job(session, job, hosts, free, reserved, held, now)
            )
            if isinstance(outcome, Placement):
                placements.append(outcome)
                known.clear()
                continue
            if outcome is None:  # a racing pass placed it
                continue
            why, reserving = outcome
            if reserving:  # later jobs find these hosts held: their reason differs
                known.clear()
            else:
                known[job.gpus] = why
        if why != job.waiting_reason:
            budget.offer(position, job.id, why)
        budget.went_past(position, job.id)
    _note_waiting(session, budget.spent())
    session.commit()
    return placements


# What placing a job came to: its placement; why it waits, and whether it reserved hosts
# that were not held yet; or None when a racing pass placed it first.
Outcome = Placement | tuple[str, bool] | None


def _place_cpu_job(
    session: Session, job: QueuedJob, hosts: list[Host], cpu_busy: dict[str, int], now: datetime
) -> Outcome:
    open_hosts = [h for h in hosts if cpu_busy.get(h.name, 0) < h.cpu_slots]
    if not open_hosts:
        return ("no worker host is up" if not hosts else "waits for a CPU slot"), False
    host = min(open_hosts, key=lambda h: (cpu_busy.get(h.name, 0), h.name))
    if not _place(session, job, host.name, (), now):
        return None
    cpu_busy[host.name] = cpu_busy.get(host.name, 0) + 1
    return Placement(job.id, host.name, host.queue, ())


def _over_quota(settings: Settings, job: QueuedJob, held: dict[int | None, int]) -> str | None:
    quota = settings.max_gpus_per_user
    if quota and held[job.owner_id] + job.gpus > quota:
        return (
            f"owner's GPU quota: holds {held[job.owner_id]} of {quota}, this job needs {job.gpus}"
        )
    return None


def _place_gpu_job(
    session: Session,
    job: QueuedJob,
    hosts: list[Host],
    free: dict[str, list[int]],
    reserved: dict[str, int],
    held: dict[int | None, int],
    now: datetime,
) -> Outcome:
    need = job.gpus
    usable = {h.name: sum(1 for gpu in h.gpus if not gpu.foreign_pids) for h in hosts}
    fitting = [h for h in hosts if usable[h.name] >= need]
    if not fitting:
        why = too_few_gpus(hosts, need)
        if why is None and hosts:
            # Enough GPUs, but some are busy with processes Trainyard did not start: wait,
            # and hold nothing back for a job that may never fit while they run.
            best = max(hosts, key=lambda h: (usable[h.name], h.name))
            why = (
                f"needs {need} GPUs on one host; host {best.name} has "
                f"{len(best.gpus) - usable[best.name]} of {len(best.gpus)} busy with "
                "processes Trainyard did not start"
            )
        return (why or "no worker host is up"), False
    ready = [h for h in fitting if h.name not in reserved and len(free[h.name]) >= need]
    if not ready:
        best = max(fitting, key=lambda h: (len(free[h.name]), h.name))
        reason = f"needs {need} GPUs on one host; host {best.name} has {len(free[best.name])} free"
        if best.name in reserved:
            reason += f" and is held for job {reserved[best.name]}, queued earlier"
        unheld = [host.name for host in fitting if host.name not in reserved]
        for name in unheld:
            reserved[name] = job.id
        return reason, bool(unheld)
    # Best fit: the host left with the fewest free GPUs keeps larger blocks for larger jobs.
    host = min(ready, key=lambda h: (len(free[h.name]) - need, h.name))
    indices = tuple(sorted(free[host.name])[:need])
    if not _place(session, job, host.name, indices, now):
        return None
    free[host.name] = [i for i in free[host.name] if i not in indices]
    held[job.owner_id] += need
    return Placement(job.id, host.name, host.queue, indices)


def _place(
    session: Session, job: QueuedJob, host: str, gpu_indices: tuple[int, ...], now: datetime
) -> bool:
    row = session.get(Job, job.id)
    return row is not None and lifecycle.place(session, row, host, gpu_indices, now)


class _ReasonBudget:
    """Which changed reasons a pass writes, offered in queue order: the first ones, and a
    sweep that goes on after the job the last sweep ended on (wherever placements have moved
    it), wrapping around to the front. Holds at most REASONS_PER_PASS of them: a pass after
    a burst meets thousands."""

    def __init__(self) -> None:
        self.front_size = REASONS_PER_PASS - REASONS_PER_PASS // 2
        self.sweep_size = REASONS_PER_PASS // 2
        self.front: list[tuple[int, int, str]] = []  # (queue position, job, its new reason)
        self.ahead: list[tuple[int, int, str]] = []  # after where the last sweep ended
        self.behind: list[tuple[int, int, str]] = []  # before it: the sweep's wrap-around
        self.past_last_sweep = _last_swept is None

    def offer(self, position: int, job_id: int, why: str) -> None:
        if len(self.front) < self.front_size:
            self.front.append((position, job_id, why))
            return
        into = self.ahead if self.past_last_sweep else self.behind
        if len(into) < self.sweep_size:
            into.append((position, job_id, why))

    def went_past(self, position: int, job_id: int) -> None:
        """The pass has considered this job (offered or not)."""
        if not self.past_last_sweep and _last_swept is not None:
            # That job itself, or, if it has left the queue, the place it had.
            self.past_last_sweep = job_id == _last_swept[0] or position >= _last_swept[1]

    def spent(self) -> dict[str, list[int]]:
        """New reason -> its jobs; remembers where this sweep ended."""
        global _last_swept
        sweep = (self.ahead + self.behind)[: self.sweep_size]
        if sweep:
            _last_swept = (sweep[-1][1], sweep[-1][0])
        waiting: defaultdict[str, list[int]] = defaultdict(list)
        for _, job_id, why in self.front + sweep:
            waiting[why].append(job_id)
        return waiting


def _note_waiting(session: Session, waiting: dict[str, list[int]]) -> None:
    """Say why jobs wait (GET /jobs/{id} shows it): one UPDATE per reason, not one per job
    (at most REASONS_PER_PASS ids in all: few bound parameters on any SQLite)."""
    for why, ids in waiting.items():
        session.execute(
            update(Job)
            .where(Job.id.in_(ids))
            .where(Job.status == JobStatus.queued)
            .values(waiting_reason=why)
            .execution_options(synchronize_session=False)
        )
