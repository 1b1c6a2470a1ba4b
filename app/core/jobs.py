"""Reading jobs and epochs: lookups, listings, the queue order. State changes are in
app/core/lifecycle.py."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    UnaryExpression,
    bindparam,
    case,
    func,
    select,
)
from sqlalchemy.orm import Session, joinedload, selectinload

from app.core.job_tally import jobs_in, queued_above
from app.core.models import ACTIVE_STATUSES, QUEUED_ON_CPU, Epoch, Job, JobStatus

# The order in which queued jobs are considered for a placement: priority, then submission.
QUEUE_ORDER: tuple[UnaryExpression[int], ...] = (Job.priority.desc(), Job.id.asc())


# A place in the queue order, as a tuple that sorts the same way: (-priority, id).
QueueKey = tuple[int, int]


def queue_key(priority: int, job_id: int) -> QueueKey:
    return (-priority, job_id)


class QueuedJob(NamedTuple):
    """What a scheduling pass needs of a queued job."""

    id: int
    priority: int
    attempt: int  # its last run's (placing it leases GPUs to the next)
    owner_id: int | None
    gpus: int
    waiting_reason: str | None

    @property
    def key(self) -> QueueKey:
        return queue_key(self.priority, self.id)


def after_in_queue(key: QueueKey) -> ColumnElement[bool]:
    """Jobs that come after the place `key` in QUEUE_ORDER (whether or not a job is there)."""
    priority, job_id = -key[0], key[1]
    return (Job.priority < priority) | ((Job.priority == priority) & (Job.id > job_id))


def _from_place_to_place(first: QueueKey, last: QueueKey) -> ColumnElement[bool]:
    """Jobs from the place `first` to the place `last` in QUEUE_ORDER, both included (each
    bound an OR of two index ranges, which PostgreSQL reads as a BitmapOr)."""
    (low, first_id), (high, last_id) = (-first[0], first[1]), (-last[0], last[1])
    return ((Job.priority < low) | ((Job.priority == low) & (Job.id >= first_id))) & (
        (Job.priority > high) | ((Job.priority == high) & (Job.id <= last_id))
    )


def queued_in_order(
    session: Session,
    *,
    after: QueueKey | None = None,
    limit: int | None = None,
    on_cpu_only: bool = False,
) -> list[QueuedJob]:
    """Jobs waiting for a placement in QUEUE_ORDER, from after `after`, at most `limit`:
    six small columns, not full rows and their JSON specs (which were most of a pass's time
    at 10,000 queued). `on_cpu_only` keeps the jobs with gpus 0 (ix_jobs_queued_on_cpu)."""
    columns = (Job.id, Job.priority, Job.attempt, Job.owner_id, Job.gpus, Job.waiting_reason)
    query = select(*columns).where(Job.status == JobStatus.queued)
    if after is not None:
        query = query.where(after_in_queue(after))
    if on_cpu_only:
        query = query.where(QUEUED_ON_CPU)
    rows = session.execute(query.order_by(*QUEUE_ORDER).limit(limit))
    return [QueuedJob(*row) for row in rows]


def queue_positions(session: Session, jobs: list[Job]) -> dict[int, int]:
    """1-based places in the queue of those of `jobs` that are queued, in one query."""
    queued = [job for job in jobs if job.status == JobStatus.queued]
    if len(queued) == 1:
        return {queued[0].id: queue_position(session, queued[0])}
    if not queued:
        return {}
    # Counted up to the first of them, numbered from there to the last: the jobs of a page
    # are mostly close together in the queue (the newest, at its back).
    keys = sorted(queue_key(job.priority, job.id) for job in queued)
    place = (func.row_number().over(order_by=QUEUE_ORDER) + _AHEAD.scalar_subquery()).label("place")
    span = _from_place_to_place(keys[0], keys[-1])
    ranked = select(Job.id, place).where(Job.status == JobStatus.queued, span).subquery()
    ids = [job.id for job in queued]
    rows = session.execute(
        select(ranked.c.id, ranked.c.place).where(ranked.c.id.in_(ids)), place_params(keys[0])
    )
    return {int(job_id): int(position) for job_id, position in rows}


def queue_position(session: Session, job: Job) -> int:
    """A queued job's place: 1 + the queued jobs ahead of it."""
    return int(session.scalar(_AHEAD, place_params(queue_key(job.priority, job.id))) or 0) + 1


# Jobs of one priority counted from the back of the queue before they are counted from the
# front: a new submission, at the back, then counts nothing but itself.
FROM_THE_BACK = 500


def ahead_of_a_place(from_the_back: int = FROM_THE_BACK) -> Select[tuple[int]]:
    """The number of queued jobs before a place in QUEUE_ORDER (its parameters:
    `place_params`), in one statement, so one snapshot. Those of a higher priority come from
    job_tally; those of the same priority from job_tally less the ones from the place back,
    unless `from_the_back` or more are there: then they are counted from the front.
    Counting them all from the front cost a submission 6 ms of PostgreSQL's time at 12,000
    queued (each job read from the table while the visibility map is not set)."""
    priority = bindparam("place_priority", type_=Integer)
    job_id = bindparam("place_id", type_=Integer)
    same = (Job.status == JobStatus.queued) & (Job.priority == priority)
    tail = select(Job.id).where(same, Job.id >= job_id).limit(from_the_back).subquery()
    behind = select(func.count().label("jobs")).select_from(tail).subquery()
    before = select(func.count()).select_from(Job).where(same, Job.id < job_id)
    return select(
        case(
            (behind.c.jobs < from_the_back, queued_above(priority, or_at=True) - behind.c.jobs),
            else_=queued_above(priority) + before.scalar_subquery(),
        )
    ).select_from(behind)


# Built once: a statement's cache key is computed once per object, and building and keying
# this one on every call was a third of its cost to the API.
_AHEAD = ahead_of_a_place()


def place_params(key: QueueKey) -> dict[str, int]:
    return {"place_priority": -key[0], "place_id": key[1]}


def last_epochs(session: Session, job_ids: list[int]) -> dict[int, Epoch]:
    """The last recorded epoch of each of `job_ids` that has one, in one query.

    Each job's last epoch number is its own max(), which the (job_id, epoch) index answers
    from one entry. Grouping all their epochs instead made PostgreSQL misjudge the groups at
    millions of epoch rows and scan the whole table: a second for a page of 500 jobs."""
    if not job_ids:
        return {}
    last = select(func.max(Epoch.epoch)).where(Epoch.job_id == Job.id).scalar_subquery()
    newest = (
        select(Job.id.label("job_id"), last.label("epoch")).where(Job.id.in_(job_ids)).subquery()
    )
    rows = session.scalars(
        select(Epoch).join(
            newest, (Epoch.job_id == newest.c.job_id) & (Epoch.epoch == newest.c.epoch)
        )
    )
    return {row.job_id: row for row in rows}


def active_jobs_naming(session: Session, field: str, value: int) -> list[int]:
    """Ids of the queued, placed and running jobs whose spec's `field` is `value` (an
    uploaded dataset's or architecture's id). Compared in Python: in the JSON spec the field
    may also hold a name, such as "cifar10" or "resnet20"."""
    active = session.execute(select(Job.id, Job.spec).where(Job.status.in_(ACTIVE_STATUSES)))
    return sorted(job_id for job_id, spec in active if spec.get(field) == value)


def job_for_key(session: Session, owner_id: int, idempotency_key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == idempotency_key)
    )


def get_job(session: Session, job_id: int) -> Job | None:
    # With its owner (the view shows the name) in the same query, not a second round trip.
    return session.get(Job, job_id, options=[joinedload(Job.owner)])


def list_jobs(
    session: Session, status: JobStatus | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    total = session.scalar(select(jobs_in(status))) or 0
    page = query.options(selectinload(Job.owner)).order_by(Job.id.desc())
    jobs = session.scalars(page.limit(limit).offset(offset)).all()
    return list(jobs), total


def list_epochs(session: Session, job_id: int) -> list[Epoch]:
    return list(session.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)))
