"""One settings object for the API, the worker and the CLI, read from TRAINYARD_* variables."""

from __future__ import annotations

import os
import shlex
import socket
import sys
import warnings
from functools import lru_cache
from pathlib import Path

import platformdirs
from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("trainyard", appauthor=False))


# The pool's defaults, also make_engine's for an engine made without the settings.
DATABASE_POOL_SIZE = 10
DATABASE_MAX_OVERFLOW = 10


class Settings(BaseSettings):
    """Everything configurable, with the embedded defaults (SQLite, no broker server)."""

    model_config = SettingsConfigDict(
        env_prefix="TRAINYARD_", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the database file, the embedded broker and every job's folder live.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty means a SQLite file under the data directory.",
    )
    # Eight clients submitting at once kept a pool of 5 opening a new server process for
    # every tenth submission.
    database_pool_size: int = Field(
        default=DATABASE_POOL_SIZE,
        ge=1,
        le=1000,
        description="PostgreSQL connections each process keeps open.",
    )
    database_max_overflow: int = Field(
        default=DATABASE_MAX_OVERFLOW,
        ge=0,
        le=1000,
        description="Connections a process may open beyond the pool in a burst (closed "
        "when returned). Keep processes x (pool + overflow) under the server's "
        "max_connections.",
    )
    broker_url: str = Field(
        default="",
        description="Celery broker URL; empty means the embedded filesystem transport "
        "under the data directory (no server).",
    )
    queue: str = Field(
        default="trainyard",
        description="Prefix of the Celery queues: each worker host consumes <queue>.<host "
        "name>, where the scheduler sends the jobs it places on that host.",
    )
    worker_concurrency: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Celery threads of a worker; 0: its GPU count + cpu_job_slots "
        "(the scheduler decides what runs; this only has to be large enough).",
    )
    simulated_gpus: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Advertise N simulated GPUs (CPU logical devices) instead of real ones.",
    )
    cpu_job_slots: int = Field(
        default=1, ge=0, le=64, description="Jobs with gpus = 0 one host runs at once."
    )
    max_gpus_per_user: int = Field(
        default=0, ge=0, description="GPUs one user may hold at once; 0: no limit (jobs wait)."
    )
    max_active_jobs_per_user: int = Field(
        default=100,
        ge=0,
        description="Queued, placed and running jobs per user (over it: 429); 0: no limit. "
        "The default keeps one script from filling a shared box's queue.",
    )
    heartbeat_seconds: float = Field(
        default=2.0, gt=0, description="How often a worker reports its host and GPUs."
    )
    host_timeout_seconds: float = Field(
        default=30.0, gt=0, description="A host silent this long is lost; its jobs requeue."
    )
    schedule_seconds: float = Field(
        default=1.0, gt=0, description="How often a worker runs a scheduling pass."
    )
    dispatch_timeout_seconds: float = Field(
        default=60.0, gt=0, description="A placed job not claimed this long is sent again."
    )
    max_lost_runs: int = Field(
        default=3,
        ge=1,
        # The old name still works (deprecated; get_settings warns): it never limited
        # attempts, only runs lost with their worker.
        validation_alias=AliasChoices("TRAINYARD_MAX_LOST_RUNS", "TRAINYARD_MAX_ATTEMPTS"),
        description="Runs of one job lost with their worker (not clean stops) before the job "
        "fails with worker_lost.",
    )
    worker_name: str = Field(
        default_factory=socket.gethostname, description="This worker host's name."
    )
    cancel_grace_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between SIGTERM and SIGKILL when a run is cancelled or stopped.",
    )
    max_concurrent_uploads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Uploads one API process checks at once (each loads its arrays); more "
        "get 429 and are sent again.",
    )
    submit_rate_per_minute: int = Field(
        default=120,
        ge=0,
        description="Job submissions one user may make per minute, in bursts of up to as "
        "many, counted across all API processes (over it: 429 with Retry-After); 0: no limit.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest request body other than a dataset upload (JSON): over it, 413 "
        "before the body is parsed.",
    )
    max_dataset_bytes: int = Field(
        default=2 * 1024**3, ge=1, description="Largest .npz that POST /datasets accepts."
    )
    max_model_bytes: int = Field(
        default=256 * 1024**2,
        ge=1,
        description="Largest architecture file (.keras or model JSON) that POST /models accepts.",
    )
    max_model_params: int = Field(
        default=100_000_000,
        ge=1,
        description="Most parameters an uploaded architecture may have.",
    )
    model_check_seconds: float = Field(
        default=120.0,
        gt=0,
        description="Time the check of an uploaded architecture may take (a child process).",
    )
    model_check_memory_bytes: int = Field(
        default=6 * 1024**3,
        ge=2 * 1024**3,
        description="Address space of the child process that checks an uploaded architecture "
        "(TensorFlow itself takes about 1.6 GB of it).",
    )
    max_storage_bytes_per_user: int = Field(
        default=20 * 1024**3,
        ge=0,
        description="What one user's uploaded datasets may take in all (over it: 413); 0: no "
        "limit.",
    )
    job_retention_days: float = Field(
        default=0,
        ge=0,
        description="`trainyard gc` deletes jobs that ended more than this many days ago, "
        "with their files; 0: keep every job (gc then needs --older-than).",
    )
    trainer_command: str = Field(
        default="",
        description="The command that starts a trainer (split like a shell would); the "
        "supervisor appends --json --exit-on-stdin-eof --config FILE --workdir DIR. Empty: "
        "this Python's `-m worker.training`.",
    )
    artifact_store: str = Field(
        default="database",
        pattern=r"^(database|file:///.+|/.+)$",
        description="Where models, checkpoints and uploaded datasets are kept: `database` "
        "(chunked in the database: hosts need share nothing else) or a directory every host "
        "mounts (`file:///mnt/trainyard` or `/mnt/trainyard`).",
    )
    retry_killed_runs: bool = Field(
        default=False,
        description="A trainer killed by the OOM killer or another SIGKILL goes back to the "
        "queue and resumes from its checkpoint (counted as a lost run) instead of failing.",
    )
    max_log_lines: int = Field(
        default=200_000,
        ge=100,
        description="Trainer log lines kept per job in the database; beyond it the oldest go, "
        "and the log says how many.",
    )
    log_tail_lines: int = Field(
        default=20, ge=1, description="Lines of the trainer's stderr kept in a failure message."
    )

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'trainyard.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        return self

    @property
    def artifact_dir(self) -> Path | None:
        """The artifact store's directory, or None when the store is the database."""
        if self.artifact_store == "database":
            return None
        return Path(self.artifact_store.removeprefix("file://"))

    def trainer_argv(self) -> list[str]:
        """The trainer command, without the arguments the supervisor appends."""
        if self.trainer_command.strip():
            return shlex.split(self.trainer_command)
        return [sys.executable, "-m", "worker.training"]

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def broker_dir(self) -> Path:
        """Folder of the embedded filesystem transport's messages."""
        return self.data_dir / "broker"

    @property
    def datasets_dir(self) -> Path:
        """Uploaded datasets, and where CIFAR-10's archive goes on an offline host."""
        return self.data_dir / "datasets"

    def dataset_path(self, dataset_id: int) -> Path:
        return self.datasets_dir / "uploads" / f"{dataset_id}.npz"

    def job_dir(self, job_id: int) -> Path:
        return self.jobs_dir / str(job_id)

    def ensure_dirs(self) -> None:
        """Create the data directory's folders, private to the account that runs Trainyard
        (a data directory made by an earlier version is closed too)."""
        for path in (self.data_dir, self.jobs_dir, self.broker_dir, self.datasets_dir / "uploads"):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)


# Files and folders Trainyard creates are its account's alone (0600, 0700): the database,
# logs, models and uploads hold what the API shows only to their owners.
PRIVATE_UMASK = 0o077


def make_files_private() -> None:
    """Set this process's umask so that what it creates (and what its children, the trainers,
    create) is private. Called where each process starts: the command, the API app, the
    Celery app, the trainer."""
    os.umask(PRIVATE_UMASK)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    if "TRAINYARD_MAX_ATTEMPTS" in os.environ:
        warnings.warn(
            "TRAINYARD_MAX_ATTEMPTS is deprecated: it limits runs lost with their worker, so it "
            "is now TRAINYARD_MAX_LOST_RUNS (the old name still works; the new one wins)",
            FutureWarning,  # shown by default: the operator must see it
            stacklevel=2,
        )
    return Settings()
