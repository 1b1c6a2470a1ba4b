"""What the trainer is given: its --config (the job's training fields) and the devices of its
leases (CUDA_VISIBLE_DEVICES, or CPU replicas for simulated GPUs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.lifecycle import leased_indices
from app.core.models import Gpu, Host
from app.core.spec import TrainingSpec
from worker.gpus import GpuInfo, cuda_visible_devices


def trainer_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The trainer's --config: the job spec's training fields (the trainer validates them
    again). An uploaded dataset's id is left for the supervisor to replace by the path of
    its host's copy (worker.run_files.cached_dataset)."""
    return {key: spec[key] for key in TrainingSpec.model_fields if key in spec}


@dataclass
class Devices:
    """What the trainer is given: config overrides and environment for its leased GPUs."""

    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def leased_devices(session: Session, job_id: int, attempt: int, settings: Settings) -> Devices:
    """The trainer sees exactly the GPUs leased to this attempt, and nothing else.

    CUDA_VISIBLE_DEVICES is set before TensorFlow loads (the trainer is a fresh process);
    CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA's numbering agree with NVML's. On a host with
    simulated GPUs the leased count becomes the trainer's CPU replica count.
    """
    indices = leased_indices(session, job_id, attempt)
    if not indices:  # a CPU job: hide every GPU, they belong to leases of other jobs
        return Devices(env={"CUDA_VISIBLE_DEVICES": ""})
    host = session.get(Host, settings.worker_name)
    if host is not None and host.simulated:
        return Devices(
            config={"gpus": 0, "cpu_replicas": len(indices)}, env={"CUDA_VISIBLE_DEVICES": ""}
        )
    rows = session.scalars(
        select(Gpu).where(Gpu.host == settings.worker_name, Gpu.index.in_(indices))
    )
    infos = [GpuInfo(row.index, row.name, row.uuid, None, None, None, ()) for row in rows]
    return Devices(
        env={
            "CUDA_VISIBLE_DEVICES": cuda_visible_devices(sorted(infos, key=lambda g: g.index)),
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }
    )
