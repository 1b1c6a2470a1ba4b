"""The system of record: users, jobs and the epochs their runs recorded, worker hosts, their
GPUs and GPU leases, uploaded datasets. Only app/core/lifecycle.py changes a job's status or
a lease row; see its docstring for the state machine."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC and always returns timezone-aware datetimes (SQLite keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(enum.StrEnum):
    queued = "queued"  # waiting for a host with enough free GPUs (or a CPU slot)
    placed = "placed"  # on a host, GPUs leased, its "run job N" message sent; not yet claimed
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
ACTIVE_STATUSES = frozenset({JobStatus.queued, JobStatus.placed, JobStatus.running})


class FailureReason(enum.StrEnum):
    user_error = "user_error"
    oom = "oom"
    nan_loss = "nan_loss"
    worker_lost = "worker_lost"
    timeout = "timeout"
    cancelled = "cancelled"
    internal = "internal"
    killed = "killed"  # SIGKILL from outside, with no OOM kill recorded by the kernel
    terminated = "terminated"  # SIGTERM (or SIGINT) from outside Trainyard
    disk_full = "disk_full"  # a checkpoint, model or log could not be written: no space


class User(Base):
    """A person or script. Only a hash of the token is stored; the token is shown once."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The submission rate's state (app/core/submit_rate.py): Unix seconds, read and moved
    # under the row lock every submission takes, so it holds across API processes.
    submit_tat: Mapped[float | None] = mapped_column(Float)


class Job(Base):
    __tablename__ = "jobs"
    # AUTOINCREMENT: SQLite would otherwise give a new job the id of a deleted one.
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # The submitter's Idempotency-Key: a retried POST /jobs returns the job it created.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # spec["gpus"], kept by _copy_gpus: a scheduling pass reads it for every queued job each
    # second, and parsing thousands of JSON specs for it was most of the pass's time.
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    # Incremented by each claim; every write from a run names the attempt it belongs to.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # Runs lost with their worker (not clean stops); at TRAINYARD_MAX_LOST_RUNS the job fails.
    lost_runs: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Placement by the scheduler: the host whose queue got the job, and when (set while
    # placed or running; kept after the job ends, so one can see where it ran).
    host: Mapped[str | None] = mapped_column(String(200), index=True)
    placed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    waiting_reason: Mapped[str | None] = mapped_column(Text)
    replicas: Mapped[int | None] = mapped_column(Integer)
    # What the trainer chose for "auto" settings and measured at start (bn_momentum,
    # precision, params, global_batch, steps_per_epoch), from its `started` event.
    resolved: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    failure_reason: Mapped[str | None] = mapped_column(String(32))
    failure_message: Mapped[str | None] = mapped_column(Text)
    # Trainer log lines ever stored for the job, and how many of the oldest were dropped to
    # keep it within Settings.max_log_lines (job_log_lines holds the difference).
    log_lines: Mapped[int] = mapped_column(Integer, default=0)
    log_dropped: Mapped[int] = mapped_column(Integer, default=0)
    # The newest event id dropped with old log lines: a stream resuming before it has a gap.
    events_dropped_upto: Mapped[int] = mapped_column(BigInteger, default=0)

    owner: Mapped[User | None] = relationship()
    epochs: Mapped[list[Epoch]] = relationship(
        back_populates="job", order_by="Epoch.epoch", cascade="all, delete-orphan"
    )

    @validates("spec")
    def _copy_gpus(self, _key: str, spec: dict[str, Any]) -> dict[str, Any]:
        self.gpus = int(spec.get("gpus", 0))
        return spec


# Indexes for the reads that scale with the number of jobs (migration 0009). GET /jobs with a
# status filter pages newest first, read in order off (status, id) rather than sorting every
# job in that status; the queue order (QUEUE_ORDER in app/core/jobs.py) among queued jobs is
# read off (status, priority DESC, id) by the scheduler and the queue positions.
Index("ix_jobs_status_id", Job.status, Job.id)
Index("ix_jobs_queue_order", Job.status, Job.priority.desc(), Job.id)
# The queued jobs that train on the CPU, in queue order (migration 0017): a scheduling pass
# that has read the front of the queue looks for the first of them further back, for a free
# CPU slot, without walking thousands of GPU jobs. The predicate is literal SQL, here and in
# the query (app/core/jobs.py), so that the planner matches it in a prepared statement too.
QUEUED_ON_CPU = text("status = 'queued' AND gpus = 0")
Index(
    "ix_jobs_queued_on_cpu",
    Job.priority.desc(),
    Job.id,
    sqlite_where=QUEUED_ON_CPU,
    postgresql_where=QUEUED_ON_CPU,
)


class JobTally(Base):
    """Jobs counted by (status, priority): the sum of `delta` over the rows of a key is how
    many jobs have it. Written only by the triggers on jobs (migration 0019), +1 for what a
    job enters and -1 for what it leaves, and folded to one row per key by
    app/core/job_tally.py."""

    __tablename__ = "job_tally"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    delta: Mapped[int] = mapped_column(Integer)


class Epoch(Base):
    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)  # numbered from 1, as the seed's log
    attempt: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float | None] = mapped_column(Float)
    replicas: Mapped[int | None] = mapped_column(Integer)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="epochs")


class LogLine(Base):
    """One line of a run's trainer log (its stderr), shipped by the supervisor in batches, so
    the API serves logs from the database wherever the run was."""

    __tablename__ = "job_log_lines"
    __table_args__ = (
        Index("ix_job_log_lines_job_id_id", "job_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    line: Mapped[str] = mapped_column(Text)


class JobEvent(Base):
    """What happened to a job, in order: `status` (each transition), `epoch` (a stored
    record), `log` (a batch of trainer lines). `position` orders the events as they became
    visible and is what a stream sends as the event's id and resumes after (Last-Event-ID);
    log events go when their lines are dropped."""

    __tablename__ = "job_events"
    __table_args__ = (
        Index("ix_job_events_job_id_id", "job_id", "id"),
        Index("ix_job_events_position", "position", unique=True),
        Index("ix_job_events_job_id_position", "job_id", "position"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Lines a log event holds (0 for others): what is dropped with old lines, without
    # reading the lines themselves.
    line_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set by the database when the inserting transaction commits (migration 0016's trigger),
    # in commit order; null only inside that transaction. The id is in insert order, which on
    # PostgreSQL need not be the order in which concurrent transactions commit.
    position: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Artifact(Base):
    """A stored file (app/core/artifacts.py's database backend): its size and SHA-256; the
    bytes are in artifact_chunks under the same key."""

    __tablename__ = "artifacts"

    key: Mapped[str] = mapped_column(String(500), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ArtifactChunk(Base):
    """One CHUNK_BYTES piece of an artifact, numbered from 0. No foreign key to artifacts:
    an upload writes its chunks under a staging key before the artifact row exists."""

    __tablename__ = "artifact_chunks"

    key: Mapped[str] = mapped_column(String(600), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Host(Base):
    """A worker host, registered at start and kept alive by its heartbeat."""

    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queue: Mapped[str] = mapped_column(String(255))
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    gpu_source: Mapped[str] = mapped_column(String(32))
    cpu_slots: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # How long this host's worker took for its last scheduling pass (GET /metrics).
    last_pass_seconds: Mapped[float | None] = mapped_column(Float)

    gpus: Mapped[list[Gpu]] = relationship(order_by="Gpu.index", cascade="all, delete-orphan")


class Gpu(Base):
    """One GPU of a host as last reported: identity, memory, use, foreign processes."""

    __tablename__ = "gpus"
    __table_args__ = (UniqueConstraint("host", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(ForeignKey("hosts.name", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    uuid: Mapped[str | None] = mapped_column(String(100))
    memory_total_mib: Mapped[int | None] = mapped_column(Integer)
    memory_used_mib: Mapped[int | None] = mapped_column(Integer)
    utilization_percent: Mapped[int | None] = mapped_column(Integer)
    # PIDs using the GPU that no Trainyard trainer owns: the GPU is busy, never leased.
    foreign_pids: Mapped[list[int]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GpuLease(Base):
    """A GPU held by one attempt of one job. Rows are kept as history; an active lease has
    no `released_at`, and a partial unique index allows one active lease per GPU."""

    __tablename__ = "gpu_leases"
    __table_args__ = (
        Index(
            "uq_gpu_leases_active",
            "host",
            "gpu_index",
            unique=True,
            sqlite_where=text("released_at IS NULL"),
            postgresql_where=text("released_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(200))
    gpu_index: Mapped[int] = mapped_column(Integer)
    leased_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Dataset(Base):
    """An uploaded .npz, validated before it was stored at `Settings.dataset_path(id)`.
    Visible to its owner and admins, or to every user when `public`."""

    __tablename__ = "datasets"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    public: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    image_shape: Mapped[list[int]] = mapped_column(JSON)
    dtype: Mapped[str] = mapped_column(String(16))
    classes: Mapped[int] = mapped_column(Integer)
    train_images: Mapped[int] = mapped_column(Integer)
    test_images: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    # The file's SHA-256: its key in the artifact store (datasets/<sha256>.npz) and what a
    # worker's cached copy is checked against. None for uploads from before the store.
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    owner: Mapped[User | None] = relationship()


class Architecture(Base):
    """An uploaded Keras architecture (.keras or model JSON), checked before it was stored
    (app/core/architectures.py). A job names it by id in `model`. Visible as datasets are."""

    __tablename__ = "architectures"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    public: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    kind: Mapped[str] = mapped_column(String(8))  # "keras" or "json"
    output: Mapped[str] = mapped_column(String(8))  # "softmax" or "logits"
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    classes: Mapped[int] = mapped_column(Integer)
    params: Mapped[int] = mapped_column(BigInteger)
    has_weights: Mapped[bool] = mapped_column(Boolean)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))  # its key in the artifact store
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    owner: Mapped[User | None] = relationship()


EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "replicas")
