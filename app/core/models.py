"""The system of record: users, jobs and the epochs their runs recorded, worker hosts, their
GPUs and GPU leases, uploaded datasets. Only app/core/lifecycle.py changes a job's status or
a lease row; see its docstring for the state machine."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

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


class User(Base):
    """A person or script. Only a hash of the token is stored; the token is shown once."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


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
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.queued)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # The submitter's Idempotency-Key: a retried POST /jobs returns the job it created.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
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

    owner: Mapped[User | None] = relationship()
    epochs: Mapped[list[Epoch]] = relationship(
        back_populates="job", order_by="Epoch.epoch", cascade="all, delete-orphan"
    )


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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    owner: Mapped[User | None] = relationship()


EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "replicas")
