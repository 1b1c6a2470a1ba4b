"""Reading jobs and epochs: lookups, listings, the queue order. State changes are in
app/core/lifecycle.py."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import ColumnElement, Select, UnaryExpression, func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from app.core.models import ACTIVE_STATUSES, QUEUED_ON_CPU, Epoch, Job, JobStatus, User

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


def before_in_queue(key: QueueKey) -> ColumnElement[bool]:
    """Jobs that come before the place `key` in QUEUE_ORDER."""
    priority, job_id = -key[0], key[1]
    return (Job.priority > priority) | ((Job.priority == priority) & (Job.id < job_id))


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
    # are mostly close together in the queue (the newest, at its back), and counting the
    # queue ahead costs a third of numbering it.
    keys = sorted(queue_key(job.priority, job.id) for job in queued)
    ahead = _count_queued(before_in_queue(keys[0])).scalar_subquery()
    place = (func.row_number().over(order_by=QUEUE_ORDER) + ahead).label("place")
    span = _from_place_to_place(keys[0], keys[-1])
    ranked = select(Job.id, place).where(Job.status == JobStatus.queued, span).subquery()
    ids = [job.id for job in queued]
    rows = session.execute(select(ranked.c.id, ranked.c.place).where(ranked.c.id.in_(ids)))
    return {int(job_id): int(position) for job_id, position in rows}


def queue_position(session: Session, job: Job) -> int:
    """A queued job's place: 1 + the queued jobs ahead of it, counted off the (status,
    priority, id) index. Numbering the whole queue to read one row cost as much as the rest
    of a submission at 10,000 queued."""
    ahead = session.scalar(_count_queued(before_in_queue(queue_key(job.priority, job.id))))
    return int(ahead or 0) + 1


def _count_queued(where: ColumnElement[bool]) -> Select[int]:
    return select(func.count()).select_from(Job).where(Job.status == JobStatus.queued, where)


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


def job_for_key(session: Session, owner: User, idempotency_key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key)
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
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = query.options(selectinload(Job.owner)).order_by(Job.id.desc())
    jobs = session.scalars(page.limit(limit).offset(offset)).all()
    return list(jobs), total


def list_epochs(session: Session, job_id: int) -> list[Epoch]:
    return list(session.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)))
