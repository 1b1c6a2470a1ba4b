"""Response bodies: what the API returns. The request body of POST /jobs is the job spec
(app/core/spec.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.hosts import GpuState
from app.core.models import Dataset, JobStatus


class EpochOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    loss: float | None
    accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    lr: float | None
    seconds: float | None
    replicas: int | None
    attempt: int
    recorded_at: datetime


class JobOut(BaseModel):
    id: int
    name: str | None
    owner: str | None
    priority: int
    status: JobStatus
    spec: dict[str, Any]
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    host: str | None = Field(description="Host the job is (or was last) placed on.")
    gpu_indices: list[int] = Field(description="GPU indices the job holds on its host.")
    queue_position: int | None = Field(
        description="1-based place among waiting jobs (priority, then submission order)."
    )
    waiting_reason: str | None = Field(description="Why a queued job has not started yet.")
    replicas: int | None
    resolved: dict[str, Any] | None = Field(
        description="What the trainer chose and measured at its start: bn_momentum (the value "
        'used for "auto"), weight_decay (the value used when not given), precision, params, '
        "global_batch, steps_per_epoch."
    )
    current_epoch: int | None = Field(description="Last completed epoch, if any.")
    last_metrics: EpochOut | None = Field(description="Metrics of the last completed epoch.")
    cancel_requested: bool
    failure_reason: str | None
    failure_message: str | None


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    image_shape: list[int] = Field(description="(H, W, C) of one image.")
    dtype: str
    classes: int
    train_images: int
    test_images: int
    size_bytes: int
    created_at: datetime
    owner: str | None = Field(description="Who uploaded it (none for uploads from before owners).")
    public: bool = Field(description="Visible to every user; otherwise to its owner and admins.")
    sha256: str | None = Field(description="SHA-256 of the file (none for old uploads).")

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetOut:
        return cls.model_validate(
            {
                **{name: getattr(dataset, name) for name in cls.model_fields if name != "owner"},
                "owner": dataset.owner.name if dataset.owner else None,
            }
        )


class GpuOut(BaseModel):
    index: int
    name: str
    uuid: str | None
    memory_total_mib: int | None
    memory_used_mib: int | None
    utilization_percent: int | None
    state: GpuState = Field(
        description="leased: held by job_id; foreign: used by a process Trainyard did not start."
    )
    job_id: int | None
    user: str | None
    foreign_pids: list[int]


class HostOut(BaseModel):
    name: str
    simulated: bool = Field(description="GPUs are CPU logical devices (TRAINYARD_SIMULATED_GPUS).")
    gpu_source: str = Field(description="nvml, nvidia-smi, simulated or none.")
    last_heartbeat: datetime
    alive: bool
    gpus: list[GpuOut]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str = Field(description='"ok", or why it cannot be used.')
    data_dir: str = Field(description='"ok", or why the data directory cannot be written.')
    version: str
