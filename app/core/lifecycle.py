"""Every change of a job's status and every GPU lease row: no other module writes either.

    queued --place--> placed --claim--> running --finish--> succeeded | failed | cancelled
      ^  ^              |                 |
      |  +---unplace----+                 |   (its host was lost before it claimed the job)
      +------requeue / lose_run-----------+   (worker stopped cleanly / run lost with its host)
    queued, placed --cancel--> cancelled      running --cancel--> flag; the run ends it
    running --lose_run, max_lost_runs reached--> failed (worker_lost)
    succeeded | failed | cancelled --delete--> (gone, with its epochs and lease history)

Leases: `place` inserts a job's leases in the transaction that places it (all-or-nothing; a
partial unique index allows one active lease per GPU, so a racing pass fails instead of
leasing a GPU twice). Every transition out of placed or running releases them; out of running
only once the run's trainer process group is gone (the callers' contract).

Every transition is one conditional UPDATE on the status (and attempt) it expects, so two
racing writers (a cancel and a claim, two scheduling passes, a stale run and a fresh one)
never both succeed. Functions that end a transaction say so; the others leave the commit to
their caller, who groups them (a scheduling pass, a reconciliation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from app.core import events, submit_rate
from app.core.db import new_row, rows_changed, table_of
from app.core.jobs import job_for_key
from app.core.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Architecture,
    Dataset,
    Epoch,
    FailureReason,
    GpuLease,
    Job,
    JobEvent,
    JobStatus,
    LogLine,
    User,
    utcnow,
)
from app.core.spec import JobSpec

log = logging.getLogger(__name__)

# What going back to the queue resets: the job is nowhere, holds nothing, runs nowhere.
_BACK_TO_QUEUE: dict[str, Any] = {
    "status": JobStatus.queued,
    "host": None,
    "placed_at": None,
    "heartbeat_at": None,
}


@dataclass(frozen=True)
class Claim:
    """One attempt of one job, owned by the run that claimed it."""

    job_id: int
    attempt: int
    spec: dict[str, Any]


def owned_by(job_id: int, attempt: int) -> ColumnElement[bool]:
    """The condition every write of a run carries: its attempt still owns the job."""
    return (Job.id == job_id) & (Job.attempt == attempt) & (Job.status == JobStatus.running)


class DatasetGone(Exception):
    """The job's uploaded dataset was deleted while the job was being submitted."""


class ArchitectureGone(Exception):
    """The uploaded architecture a submission names was deleted meanwhile."""


class SubmitRateLimit(Exception):
    """The owner submitted as fast as allowed; one more is admitted in `retry_after` s."""

    def __init__(self, per_minute: int, retry_after: int) -> None:
        super().__init__(f"over {per_minute} submissions a minute; retry in {retry_after} s")
        self.per_minute = per_minute
        self.retry_after = retry_after


class ActiveJobLimit(Exception):
    """The owner already has `limit` queued, placed or running jobs."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"already {limit} queued, placed or running jobs, the limit")
        self.limit = limit


def submit(
    session: Session,
    spec: JobSpec,
    owner: User,
    idempotency_key: str | None = None,
    max_active: int = 0,
    per_minute: int = 0,
    now: float | None = None,
    before_commit: Callable[[Job], None] | None = None,
) -> Job:
    """Store the job as queued (commits). With a key this owner already used, the job of that
    first submission is returned instead (also when two such requests race).

    `before_commit` is called with the new job in its transaction, just before the commit
    (the API reads the job's answer there: a read after the commit is one more transaction).

    `max_active` (0: no limit) bounds the owner's active jobs, also under concurrency: the
    transaction first locks the owner's row (an UPDATE: a row lock on PostgreSQL, the write
    lock on SQLite), so the count and the insert of two racing submissions never interleave.
    Raises ActiveJobLimit, writing nothing, when the owner is at the limit.

    `per_minute` (0: no limit) bounds how fast the owner submits (app/core/submit_rate.py):
    the same UPDATE moves the rate's state on the owner's row. Raises SubmitRateLimit,
    writing nothing, when the owner is over it; a submission refused for any reason does
    not count. `now` (Unix seconds) is the submission's time (default: the clock's).

    An uploaded dataset the job names is read under a share lock, which a concurrent
    `datasets.delete_dataset` (an update lock, then its check for active jobs) waits on or
    makes wait: the job is stored and its dataset kept, or DatasetGone is raised.
    """
    owner_id = owner.id  # read now: a rollback expires `owner`, and reading it again is a query
    if session.get_bind().dialect.name == "sqlite":
        # End any read transaction: SQLite cannot turn one into a write transaction once
        # another writer has committed. (PostgreSQL reads each statement below afresh.)
        session.commit()
    # The owner's row lock also takes SQLite's one write lock before anything is read, so
    # what is read below cannot change before this transaction commits.
    if per_minute:
        if now is None:
            now = time.time()  # wall clock: API processes compare it across the box
        moving = {"owner": owner_id, "now": now, "interval": submit_rate.interval(per_minute)}
        tat = session.scalar(_LOCK_OWNER_MOVING_RATE, moving)
        if tat is not None and (wait := submit_rate.retry_after(tat, now)) is not None:
            session.rollback()
            raise SubmitRateLimit(per_minute, wait)
    else:
        session.execute(_LOCK_OWNER, {"owner": owner_id})
    if isinstance(spec.dataset, int):
        locked = select(Dataset.id).where(Dataset.id == spec.dataset).with_for_update(read=True)
        if session.scalar(locked) is None:
            session.rollback()
            raise DatasetGone(spec.dataset)
    if isinstance(spec.model, int):  # as the dataset: kept, or the job is not stored
        held = select(Architecture.id).where(Architecture.id == spec.model)
        if session.scalar(held.with_for_update(read=True)) is None:
            session.rollback()
            raise ArchitectureGone(spec.model)
    if max_active:
        active = session.scalar(_ACTIVE_OF_OWNER, {"owner": owner_id})
        if (active or 0) >= max_active:
            session.rollback()
            raise ActiveJobLimit(max_active)
    row = new_row(
        JOBS,
        name=spec.name,
        owner_id=owner_id,
        priority=spec.priority,
        status=JobStatus.queued,
        spec=spec.model_dump(),
        gpus=spec.gpus,
        created_at=utcnow(),
        idempotency_key=idempotency_key,
    )
    try:
        job_id = session.scalar(_INSERT_JOB, row)  # a reused Idempotency-Key fails here
        events.status_now(session, job_id, JobStatus.queued, row["created_at"])
        # The stored row, as a job in the session without reading it back (every column is
        # set): the ORM's unit of work cost a submission more than both INSERTs.
        job = Job(id=job_id, **row)
        make_transient_to_detached(job)
        session.add(job)
        if before_commit is not None:
            before_commit(job)
        session.commit()
    except IntegrityError:
        session.rollback()
        earlier = job_for_key(session, owner_id, idempotency_key) if idempotency_key else None
        if earlier is None:
            raise
        return earlier
    return job


# A submission's statements, built once (building one cost about as much as running it).
JOBS = table_of(Job)
_INSERT_JOB = insert(JOBS).returning(JOBS.c.id)
_USERS = table_of(User)
_OWNER = _USERS.c.id == bindparam("owner", type_=Integer)
# The owner's row lock: an UPDATE that changes nothing, or moves the submission rate.
_LOCK_OWNER = update(_USERS).where(_OWNER).values(name=_USERS.c.name)
_LOCK_OWNER_MOVING_RATE = (
    update(_USERS)
    .where(_OWNER)
    .values(
        submit_tat=submit_rate.moved(
            _USERS.c.submit_tat,
            bindparam("now", type_=Float),
            bindparam("interval", type_=Float),
        )
    )
    .returning(_USERS.c.submit_tat)
)
_ACTIVE_OF_OWNER = (
    select(func.count())
    .select_from(Job)
    .where(Job.owner_id == bindparam("owner", type_=Integer), Job.status.in_(ACTIVE_STATUSES))
)


def place(
    session: Session,
    job_id: int,
    attempt: int,
    host: str,
    gpu_indices: tuple[int, ...],
    now: datetime,
) -> bool:
    """queued -> placed on `host`, leasing `gpu_indices` to the attempt its claim will start
    (the one after `attempt`, the job's last). False when a racing pass placed it first
    (nothing written then)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(status=JobStatus.placed, host=host, placed_at=now, waiting_reason=None)
    )
    if rows_changed(result) != 1:
        return False
    events.status(
        session, job_id, JobStatus.placed, host=host, gpus=list(gpu_indices), attempt=attempt + 1
    )
    for index in gpu_indices:
        session.add(GpuLease(job_id=job_id, attempt=attempt + 1, host=host, gpu_index=index))
    return True


def unplace(session: Session, job: Job) -> None:
    """placed -> queued: its host was lost before it claimed the job."""
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.placed, Job.host == job.host)
        .values(**_BACK_TO_QUEUE)
    )
    if rows_changed(result) == 1:
        events.status(session, job.id, JobStatus.queued, reason=f"host {job.host} was lost")
        _release_leases(session, job.id)


def claim(session: Session, job_id: int, host: str) -> Claim | None:
    """placed -> running with attempt + 1 (commits); None when the job is not placed on this
    host (a duplicate delivery, a cancelled job, a message meant for another host)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.placed, Job.host == host)
        .values(
            status=JobStatus.running,
            attempt=Job.attempt + 1,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            failure_reason=None,
            failure_message=None,
        )
        .returning(Job.attempt, Job.spec)
    )
    row = result.first()
    if row is not None:
        events.status(session, job_id, JobStatus.running, attempt=int(row[0]), host=host)
    session.commit()
    if row is None:
        return None
    return Claim(job_id=job_id, attempt=int(row[0]), spec=dict(row[1]))


def finish(
    session: Session,
    job_id: int,
    attempt: int,
    status: JobStatus,
    reason: FailureReason | None = None,
    message: str | None = None,
) -> bool:
    """running -> succeeded | failed | cancelled, leases released, in one transaction
    (commits). Only once the run's trainer is gone. False when the attempt no longer owns it."""
    result = session.execute(
        update(Job)
        .where(owned_by(job_id, attempt))
        .values(status=status, finished_at=utcnow(), failure_reason=reason, failure_message=message)
    )
    owned = rows_changed(result) == 1
    if owned:
        events.status(session, job_id, status, reason=reason, message=message, attempt=attempt)
    return _release_if_owned(session, job_id, owned)


def requeue(session: Session, job_id: int, attempt: int) -> bool:
    """running -> queued (commits): the worker stopped the run cleanly; the next run resumes
    from the last checkpoint. Not counted as a lost run."""
    result = session.execute(update(Job).where(owned_by(job_id, attempt)).values(**_BACK_TO_QUEUE))
    owned = rows_changed(result) == 1
    if owned:
        events.status(
            session, job_id, JobStatus.queued, reason="its worker stopped", attempt=attempt
        )
    return _release_if_owned(session, job_id, owned)


def lose_run(
    session: Session, job: Job, why: str, max_lost_runs: int, host_stopped: bool = True
) -> None:
    """The run's worker is gone, and with it its trainer: running -> queued to resume from the
    checkpoint, or -> failed (worker_lost) once `max_lost_runs` runs were lost. Only a run
    lost because its host stopped counts (`host_stopped`); one that ended because the
    database was away or the worker process crashed on a host that kept running does not."""
    lost = job.lost_runs + (1 if host_stopped else 0)
    values: dict[str, Any] = (
        {
            "status": JobStatus.failed,
            "finished_at": utcnow(),
            "failure_reason": FailureReason.worker_lost,
            "failure_message": f"{why}; {lost} runs lost, giving up",
        }
        if host_stopped and lost >= max_lost_runs
        else dict(_BACK_TO_QUEUE)
    )
    result = session.execute(
        update(Job).where(owned_by(job.id, job.attempt)).values(lost_runs=lost, **values)
    )
    if rows_changed(result) == 1:
        reason = values.get("failure_reason")
        events.status(
            session, job.id, values["status"], reason=reason, message=why, attempt=job.attempt
        )
        _release_leases(session, job.id)
        log.warning("job %s attempt %s lost (%s): %s", job.id, job.attempt, why, values["status"])


def cancel(session: Session, job: Job) -> bool:
    """Cancel a queued or placed job at once, or flag a running one for its supervisor, which
    ends the trainer and then calls `finish` (commits). False when the job had already ended
    otherwise than cancelled."""
    now = utcnow()
    waiting = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.in_([JobStatus.queued, JobStatus.placed]))
        .values(
            status=JobStatus.cancelled,
            finished_at=now,
            cancel_requested_at=now,
            failure_reason=FailureReason.cancelled,
            failure_message="cancelled before it started",
        )
    )
    if rows_changed(waiting) == 1:
        events.status(session, job.id, JobStatus.cancelled, reason=FailureReason.cancelled)
        _release_leases(session, job.id)  # placed: no trainer was started, nothing holds them
    else:
        session.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.status == JobStatus.running,
                Job.cancel_requested_at.is_(None),
            )
            .values(cancel_requested_at=now)
        )
    session.commit()
    session.refresh(job)
    return job.status != JobStatus.failed and job.status != JobStatus.succeeded


def delete_ended(session: Session, job_id: int) -> bool:
    """Remove a succeeded, failed or cancelled job with its epochs and lease history
    (commits). False, deleting nothing, when the job is not there or has not ended; an ended
    job never changes state again, so its files can go once this returns True."""
    gone = session.execute(delete(Job).where(Job.id == job_id, Job.status.in_(TERMINAL_STATUSES)))
    if rows_changed(gone) != 1:
        session.rollback()
        return False
    # ON DELETE CASCADE removes these on both backends; said here so no row outlives its job
    # even where foreign keys are not enforced.
    session.execute(delete(Epoch).where(Epoch.job_id == job_id))
    session.execute(delete(GpuLease).where(GpuLease.job_id == job_id))
    session.execute(delete(LogLine).where(LogLine.job_id == job_id))
    session.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
    session.commit()
    return True


def active_leases(session: Session) -> list[GpuLease]:
    return list(session.scalars(select(GpuLease).where(GpuLease.released_at.is_(None))))


def leased_indices(session: Session, job_id: int, attempt: int | None = None) -> list[int]:
    """GPU indices the job holds now (only those leased to `attempt`, when given)."""
    query = select(GpuLease.gpu_index).where(
        GpuLease.job_id == job_id, GpuLease.released_at.is_(None)
    )
    if attempt is not None:
        query = query.where(GpuLease.attempt == attempt)
    return list(session.scalars(query.order_by(GpuLease.gpu_index)))


def leased_indices_of(session: Session, job_ids: list[int]) -> dict[int, list[int]]:
    """GPU indices each of `job_ids` holds now, in one query."""
    held: dict[int, list[int]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        rows = session.execute(
            select(GpuLease.job_id, GpuLease.gpu_index)
            .where(GpuLease.job_id.in_(job_ids), GpuLease.released_at.is_(None))
            .order_by(GpuLease.gpu_index)
        )
        for job_id, index in rows:
            held[job_id].append(index)
    return held


def _release_leases(session: Session, job_id: int) -> None:
    session.execute(
        update(GpuLease)
        .where(GpuLease.job_id == job_id, GpuLease.released_at.is_(None))
        .values(released_at=utcnow())
    )


def _release_if_owned(session: Session, job_id: int, owned: bool) -> bool:
    if owned:
        _release_leases(session, job_id)
        session.commit()
    else:
        session.rollback()
    return owned
