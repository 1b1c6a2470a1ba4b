"""Placement: which queued job starts next, on which host, with which GPUs.

The rule (the README repeats it): queued jobs are considered by priority (higher first),
then submission order. A job starts as soon as one live host has enough free GPUs for it
(and a CPU slot, for `gpus: 0`). When a job that needs GPUs cannot start, every host it
could ever fit on is reserved for it: no later job of equal or lower priority is placed on
those hosts until it has started. So a 4-GPU job is never starved by a stream of 1-GPU
jobs, at the price of idle GPUs while it waits. Jobs held back only by their owner's GPU
quota reserve nothing.

A pass reads the front of the queue (FIRST_READ jobs) and goes further only while a job
further back could still start or hold a host back. Past that point a job's reason to wait
depends on its GPUs and owner alone, so the database compares it with the reason on record
and hands back only the jobs whose reason changed: with 10,000 queued for a few GPUs, a pass
no longer reads 10,000 rows each second to find the hundred it rewrites.

A pass runs in one transaction; the placements (status and leases) are made by
app/core/lifecycle.py's `place`, all-or-nothing, so two schedulers racing can never lease a
GPU twice (the loser's transaction fails and retries later).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    case,
    cast,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from app.core import job_tally, lifecycle
from app.core.config import Settings
from app.core.hosts import largest_host, live_hosts, needs_gpus, too_few_gpus
from app.core.jobs import (
    QUEUE_ORDER,
    QueuedJob,
    QueueKey,
    after_in_queue,
    queue_key,
    queued_in_order,
)
from app.core.models import GpuLease, Host, Job, JobStatus, utcnow

# pg_advisory_xact_lock key: one scheduling pass at a time across all workers.
_SCHEDULER_LOCK = 0x7472_6169
# Queued jobs a pass reads in order before it asks whether the rest of the queue can change
# anything (see _Pass.settled). Enough for every free GPU of a lab's hosts to find its job.
FIRST_READ = 256
# Waiting reasons one pass writes at most. Rewriting a job's row costs 50-80 us on
# PostgreSQL (every index of jobs gets a new entry), so the first pass after a burst of
# 10,000 submissions spent 0.5-0.9 s writing them all while holding the scheduler's lock.
# Half go to the front of the queue, what people watch; half to a sweep that starts where
# this process's last sweep stopped and wraps around, so that while placements keep
# changing the reasons at the front, those further back are still rewritten in turn.
REASONS_PER_PASS = 100
_last_swept: QueueKey | None = None  # the place in the queue where the last sweep ended


@dataclass(frozen=True)
class Placement:
    job_id: int
    host: str
    queue: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class _NewReason:
    """A queued job whose reason to wait is not the one on record."""

    key: QueueKey
    job_id: int
    why: str


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEDULER_LOCK})


def schedule(session: Session, settings: Settings) -> list[Placement]:
    """One pass: place what can start, note why the rest waits. Commits; returns the
    placements, whose run messages the caller sends."""
    _lock(session)
    # The events and GPU leases of the placements are written together at the commit, not
    # one placement at a time before each next statement: nothing in the pass reads them.
    with session.no_autoflush:
        run = _Pass(session, settings, utcnow())
        front = queued_in_order(session, limit=FIRST_READ)
        for job in front:
            run.consider(job)
        # Where the jobs read end, while more are queued after them.
        frontier = front[-1].key if len(front) == FIRST_READ else None
        if frontier is not None and not run.settled():
            for job in queued_in_order(session, after=frontier):
                run.consider(job)
            frontier = None
        if frontier is not None:
            run.place_cpu_jobs_after(frontier)
        _note_waiting(session, run.reasons_to_write(frontier))
    job_tally.fold(session)  # under the lock: one fold at a time
    session.commit()
    return run.placements


# What placing a job came to: its placement; why it waits, and whether it reserved hosts
# that were not held yet; or None when a racing pass placed it first.
Outcome = Placement | tuple[str, bool] | None
# Where a job needing some GPUs would start now, or why it waits and which hosts (fitting,
# not held yet) it would hold back.
Verdict = Host | tuple[str, list[str]]


class _Pass:
    """What the hosts offer, and what one pass has placed, held back and found, in queue
    order."""

    def __init__(self, session: Session, settings: Settings, now: datetime) -> None:
        self.session, self.settings, self.now = session, settings, now
        self.hosts = live_hosts(session, settings, now)
        # Each GPU leased now, with its job's owner (whose GPU quota it counts against).
        leases = session.execute(
            select(GpuLease.host, GpuLease.gpu_index, Job.owner_id)
            .join(Job, Job.id == GpuLease.job_id)
            .where(GpuLease.released_at.is_(None))
        ).all()
        leased = {(host, gpu_index) for host, gpu_index, _ in leases}
        self.free: dict[str, list[int]] = {
            host.name: [
                gpu.index
                for gpu in host.gpus
                if (host.name, gpu.index) not in leased and not gpu.foreign_pids
            ]
            for host in self.hosts
        }
        self.usable = {h.name: sum(1 for gpu in h.gpus if not gpu.foreign_pids) for h in self.hosts}
        self.cpu_busy: dict[str, int] = dict(
            session.execute(  # type: ignore[arg-type]  # Job.host is not NULL here
                select(Job.host, func.count())
                .where(Job.status.in_([JobStatus.placed, JobStatus.running]))
                .where(Job.gpus == 0)
                .group_by(Job.host)
            ).all()
        )
        self.held: dict[int | None, int] = defaultdict(int)  # GPUs leased, by owner
        for _, _, owner_id in leases:
            self.held[owner_id] += 1
        self.placements: list[Placement] = []
        self.reserved: dict[str, int] = {}  # host -> the waiting job it is held for
        # Why a job needing n GPUs (0: a CPU slot) waits, as long as no placement or new
        # reservation changes what the hosts offer. With thousands queued for a few GPUs
        # nearly every job waits for a reason an earlier one found: a lookup, not a search.
        self.known: dict[int, str] = {}
        self.new_reasons: list[_NewReason] = []  # among the jobs read, in queue order

    def consider(self, job: QueuedJob) -> None:
        """Place `job` if it can start, else note why it waits (if that is news)."""
        why = self._over_quota(job.owner_id, job.gpus) if job.gpus else None
        if why is None and (why := self.known.get(job.gpus)) is None:
            outcome = self._place_cpu_job(job) if job.gpus == 0 else self._place_gpu_job(job)
            if isinstance(outcome, Placement):
                self.placements.append(outcome)
                self.known.clear()
                return
            if outcome is None:  # a racing pass placed it
                return
            why, reserving = outcome
            if reserving:  # later jobs find these hosts held: their reason differs
                self.known.clear()
            else:
                self.known[job.gpus] = why
        if why != job.waiting_reason:
            self.new_reasons.append(_NewReason(job.key, job.id, why))

    def settled(self) -> bool:
        """Whether no GPU job further back can start or hold a host back: every host with a
        GPU Trainyard may use is held for a job already, or too small for every queued job.
        From there on nothing a job further back does changes what the hosts offer."""
        unheld = [h for h in self.hosts if h.name not in self.reserved and self.usable[h.name]]
        if not unheld:
            return True
        smallest = self.session.scalar(
            select(func.min(Job.gpus)).where(Job.status == JobStatus.queued, Job.gpus > 0)
        )
        return smallest is None or all(self.usable[h.name] < smallest for h in unheld)

    def place_cpu_jobs_after(self, frontier: QueueKey) -> None:
        """Once settled, only CPU jobs further back can still start (they compete for CPU
        slots alone): as many as there are open slots, in queue order."""
        after = frontier
        while open_slots := sum(
            max(0, h.cpu_slots - self.cpu_busy.get(h.name, 0)) for h in self.hosts
        ):
            found = queued_in_order(self.session, after=after, limit=open_slots, on_cpu_only=True)
            for job in found:
                outcome = self._place_cpu_job(job)  # None: cancelled or placed meanwhile
                if isinstance(outcome, Placement):
                    self.placements.append(outcome)
            if len(found) < open_slots:
                return
            after = found[-1].key

    def reasons_to_write(self, frontier: QueueKey | None) -> dict[str, list[int]]:
        """New reason -> its jobs, at most REASONS_PER_PASS: the first ones in the queue, and
        a sweep going on after where the last sweep ended (wherever placements have moved
        that place), wrapping around to the front. Remembers where this sweep ended."""
        global _last_swept
        front_size = REASONS_PER_PASS - REASONS_PER_PASS // 2
        sweep_size = REASONS_PER_PASS // 2
        further_back = self._reason_further_back() if frontier is not None else None

        def news(after: QueueKey | None, upto: QueueKey | None, limit: int) -> list[_NewReason]:
            found = [
                reason
                for reason in self.new_reasons
                if (after is None or reason.key > after) and (upto is None or reason.key <= upto)
            ][:limit]
            if len(found) < limit and frontier is not None and further_back is not None:
                start = frontier if after is None or after < frontier else after
                if upto is None or start < upto:
                    found += self._news_further_back(further_back, start, upto, limit - len(found))
            return found

        picked = news(None, None, front_size)
        if len(picked) == front_size and sweep_size:
            end_of_front = picked[-1].key
            start = end_of_front if _last_swept is None else max(end_of_front, _last_swept)
            sweep = news(start, None, sweep_size)
            if len(sweep) < sweep_size and _last_swept is not None and end_of_front < _last_swept:
                sweep += news(end_of_front, _last_swept, sweep_size - len(sweep))
            if sweep:
                _last_swept = sweep[-1].key
            picked += sweep
        waiting: defaultdict[str, list[int]] = defaultdict(list)
        for reason in picked:
            waiting[reason.why].append(reason.job_id)
        return waiting

    def _reason_further_back(self) -> ColumnElement[str | None]:
        """Why a job beyond the jobs read waits, as SQL: once settled, a function of its GPUs
        and its owner alone, the same text consider() gives. Where that is not so (a size
        smaller than any queued job's, which could start or hold a host back: a job submitted
        since), the job's own reason: nothing to write."""
        unchanged: ColumnElement[str | None] = Job.waiting_reason.expression
        whens: list[tuple[ColumnElement[bool], ColumnElement[Any]]] = []
        cpu = unchanged if self._open_cpu_hosts() else literal(self._cpu_wait_reason())
        whens.append((Job.gpus == 0, cpu))
        quota = self.settings.max_gpus_per_user
        if quota:
            for owner, count in self.held.items():
                if count:  # (owner None: SQLAlchemy writes "IS NULL")
                    whose = Job.owner_id == owner
                    whens.append((whose & (Job.gpus > quota - count), _needs(count, quota)))
            whens.append((Job.gpus > quota, _needs(0, quota)))
        return case(*whens, else_=self._gpu_reason_further_back(unchanged))

    def _gpu_reason_further_back(
        self, unchanged: ColumnElement[str | None]
    ) -> ColumnElement[str | None]:
        """_gpu_verdict's reason, settled, as SQL of the job's GPUs. The hosts that fit a
        job change only where its size crosses a host's usable GPUs (or the largest host's
        GPUs), and the reason after "needs N GPUs on one host; " depends on those hosts
        alone: one CASE branch per such step, whatever sizes the queue holds."""
        largest = largest_host(self.hosts)
        sizes = {*self.usable.values(), *([len(largest.gpus)] if largest else [])}
        steps = sorted(n for n in sizes if n)
        before, after = needs_gpus("{}").split("{}")
        pieces: list[ColumnElement[Any]] = []
        for need in [*steps, (steps[-1] if steps else 0) + 1]:
            verdict = self._gpu_verdict(need)
            if not isinstance(verdict, tuple) or verdict[1]:
                pieces.append(unchanged)  # it could start, or hold a host: not settled for it
                continue
            why, head = verdict[0], needs_gpus(need)
            if why.startswith(head):
                text_after = literal(after + why[len(head) :])
                pieces.append(literal(before) + cast(Job.gpus, String) + text_after)
            else:  # no worker host is up
                pieces.append(literal(why))
        if not steps:  # no host with a GPU (or none up): one reason for every size
            return pieces[-1]
        return case(
            *((Job.gpus <= step, piece) for step, piece in zip(steps, pieces, strict=False)),
            else_=pieces[-1],
        )

    def _news_further_back(
        self,
        reason: ColumnElement[str | None],
        after: QueueKey,
        upto: QueueKey | None,
        limit: int,
    ) -> list[_NewReason]:
        """The first `limit` jobs after `after` (up to `upto`) whose `reason` is not the one
        on record, found by the database in queue order off ix_jobs_queue_order."""
        query = select(Job.id, Job.priority, reason).where(
            Job.status == JobStatus.queued,
            after_in_queue(after),
            Job.waiting_reason.is_distinct_from(reason),
        )
        if upto is not None:
            query = query.where(~after_in_queue(upto))
        rows = self.session.execute(query.order_by(*QUEUE_ORDER).limit(limit))
        # (`reason` is never NULL where it differs from the reason on record.)
        return [
            _NewReason(queue_key(priority, job_id), job_id, why)
            for job_id, priority, why in rows
            if why is not None
        ]

    def _over_quota(self, owner_id: int | None, gpus: int) -> str | None:
        quota = self.settings.max_gpus_per_user
        if quota and self.held[owner_id] + gpus > quota:
            return _quota_reason(self.held[owner_id], quota, str(gpus))
        return None

    def _open_cpu_hosts(self) -> list[Host]:
        return [h for h in self.hosts if self.cpu_busy.get(h.name, 0) < h.cpu_slots]

    def _cpu_wait_reason(self) -> str:
        """Why a CPU job waits, when no host has an open CPU slot."""
        return "no worker host is up" if not self.hosts else "waits for a CPU slot"

    def _place_cpu_job(self, job: QueuedJob) -> Outcome:
        open_hosts = self._open_cpu_hosts()
        if not open_hosts:
            return self._cpu_wait_reason(), False
        host = min(open_hosts, key=lambda h: (self.cpu_busy.get(h.name, 0), h.name))
        if not lifecycle.place(self.session, job.id, job.attempt, host.name, (), self.now):
            return None
        self.cpu_busy[host.name] = self.cpu_busy.get(host.name, 0) + 1
        return Placement(job.id, host.name, host.queue, ())

    def _place_gpu_job(self, job: QueuedJob) -> Outcome:
        verdict = self._gpu_verdict(job.gpus)
        if isinstance(verdict, tuple):
            reason, unheld = verdict
            for name in unheld:
                self.reserved[name] = job.id
            return reason, bool(unheld)
        host, need = verdict, job.gpus
        indices = tuple(sorted(self.free[host.name])[:need])
        if not lifecycle.place(self.session, job.id, job.attempt, host.name, indices, self.now):
            return None
        self.free[host.name] = [i for i in self.free[host.name] if i not in indices]
        self.held[job.owner_id] += need
        return Placement(job.id, host.name, host.queue, indices)

    def _gpu_verdict(self, need: int) -> Verdict:
        hosts, free, usable, reserved = self.hosts, self.free, self.usable, self.reserved
        fitting = [h for h in hosts if usable[h.name] >= need]
        if not fitting:
            why = too_few_gpus(hosts, need)
            if why is None and hosts:
                # Enough GPUs, but some are busy with processes Trainyard did not start: wait,
                # and hold nothing back for a job that may never fit while they run.
                best = max(hosts, key=lambda h: (usable[h.name], h.name))
                why = (
                    f"{needs_gpus(need)}host {best.name} has "
                    f"{len(best.gpus) - usable[best.name]} of {len(best.gpus)} busy with "
                    "processes Trainyard did not start"
                )
            return (why or "no worker host is up"), []
        ready = [h for h in fitting if h.name not in reserved and len(free[h.name]) >= need]
        if not ready:
            best = max(fitting, key=lambda h: (len(free[h.name]), h.name))
            reason = f"{needs_gpus(need)}host {best.name} has {len(free[best.name])} free"
            if best.name in reserved:
                reason += f" and is held for job {reserved[best.name]}, queued earlier"
            return reason, [host.name for host in fitting if host.name not in reserved]
        # Best fit: the host left with the fewest free GPUs keeps larger blocks for larger jobs.
        return min(ready, key=lambda h: (len(free[h.name]) - need, h.name))


def _quota_reason(held: int, quota: int, needs: str) -> str:
    return f"owner's GPU quota: holds {held} of {quota}, this job needs {needs}"


def _needs(held: int, quota: int) -> ColumnElement[str]:
    """_quota_reason in SQL, its last words the job's GPUs (the same digits on both backends)."""
    return literal(_quota_reason(held, quota, "")) + cast(Job.gpus, String)


def _note_waiting(session: Session, waiting: dict[str, list[int]]) -> None:
    """Say why jobs wait (GET /jobs/{id} shows it): an UPDATE by primary key for each job (at
    most REASONS_PER_PASS), sent as one batch (executemany) of one compiled statement."""
    rows = [{"id": job_id, "waiting_reason": why} for why, ids in waiting.items() for job_id in ids]
    if rows:
        # (synchronize_session None: the pass loaded none of these rows as objects.)
        queued_only = update(Job).where(Job.status == JobStatus.queued)
        session.execute(queued_only, rows, execution_options={"synchronize_session": None})
