"""What the trainer is told: the job's spec, translated to `python -m worker.training` config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.hosts import leased_indices
from app.core.models import Gpu, Host
from worker import runs
from worker.gpus import GpuInfo, cuda_visible_devices

# Spec fields the trainer takes as they are; anything else in a spec is the service's own.
TRAINER_FIELDS = (
    "model",
    "dataset",
    "gpus",
    "cpu_replicas",
    "epochs",
    "lr",
    "batch_size",
    "momentum",
    "bn_momentum",
    "augment",
    "lr_power",
    "lr_scaling",
    "mixed_precision",
    "seed",
    "name",
)


def trainer_config(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    config = {key: spec[key] for key in TRAINER_FIELDS if key in spec}
    if isinstance(config.get("dataset"), int):  # an uploaded dataset, by id
        config["dataset"] = str(settings.dataset_path(config["dataset"]))
    return config


@dataclass
class Devices:
    """What the trainer is given: config overrides and environment for its leased GPUs."""

    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def leased_devices(session: Session, settings: Settings, claim: runs.Claim) -> Devices:
    """The trainer sees exactly the GPUs leased to this attempt, and nothing else.

    CUDA_VISIBLE_DEVICES is set before TensorFlow loads (the trainer is a fresh process);
    CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA's numbering agree with NVML's. On a host with
    simulated GPUs the leased count becomes the trainer's CPU replica count.
    """
    indices = leased_indices(session, claim.job_id, claim.attempt)
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
