"""Request and response bodies: what the API accepts (strictly) and what it returns."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.models import JobStatus

# Ids and offsets fit a 64-bit signed integer (SQLite's and PostgreSQL's BIGINT): anything
# larger is a 422, never an overflow deep in the driver.
MAX_ID = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]

DatasetName = Literal["digits", "synthetic", "cifar10"]
GpuState = Literal["free", "leased", "foreign"]


class JobSpec(BaseModel):
    """A training job as submitted: unknown fields, wrong types and out-of-range values are 422."""

    # strict: "3" is not an int and true is not a number; a lab's script gets told, not guessed at.
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(default=None, max_length=200, description="A label for people.")
    model: Literal["minigooglenet"] = Field(default="minigooglenet", description="Architecture.")
    dataset: DatasetName | Id = Field(
        default="cifar10",
        description='Training data: "cifar10", "digits", "synthetic", or the id of an '
        "uploaded dataset (POST /datasets).",
    )
    gpus: int = Field(default=1, ge=0, le=64, description="GPUs to train on; 0 trains on the CPU.")
    cpu_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Split the CPU into this many replicas (hosts without GPUs, tests); "
        "needs gpus = 0.",
    )
    epochs: int = Field(default=70, ge=1, le=1000, description="Passes over the training data.")
    lr: float = Field(default=0.005, gt=0, le=10, description="Initial learning rate.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Images per replica per step.")
    momentum: float = Field(default=0.9, ge=0, le=1, description="SGD momentum.")
    bn_momentum: float = Field(
        default=0.99,
        gt=0,
        lt=1,
        description="BatchNormalization momentum (the book's 0.99; ~0.9 suits small data sets).",
    )
    augment: bool = Field(
        default=True, description="The seed's shifts (0.1, nearest fill) and horizontal flips."
    )
    lr_power: float = Field(
        default=1.0, gt=0, le=10, description="Power of the poly LR decay (1: the seed's linear)."
    )
    lr_scaling: Literal["none", "linear"] = Field(
        default="none",
        description='"linear": initial LR x replicas after a short warm-up; "none": as the seed.',
    )
    mixed_precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="auto: float16 on GPUs that support it, bfloat16 on CPUs with AMX or "
        "AVX-512 BF16, float32 elsewhere.",
    )
    priority: int = Field(
        default=0,
        ge=-100,
        le=100,
        description="Higher starts first; equal priorities start in submission order. "
        "Only admins may set it above 0.",
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**31 - 1, description="Fixes initialisation and shuffling."
    )

    @model_validator(mode="after")
    def _one_kind_of_replica(self) -> JobSpec:
        if self.cpu_replicas and self.gpus:
            raise ValueError("cpu_replicas needs gpus = 0: a job trains on GPUs or on the CPU")
        return self


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
    worker: str | None
    host: str | None = Field(description="Host the job was placed on.")
    gpu_indices: list[int] = Field(description="GPU indices the job holds on its host.")
    queue_position: int | None = Field(
        description="1-based place among waiting jobs (priority, then submission order)."
    )
    waiting_reason: str | None = Field(description="Why a queued job has not started yet.")
    replicas: int | None
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
    status: Literal["ok"]
    database: Literal["ok"]
    version: str
