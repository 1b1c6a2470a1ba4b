"""What the trainer is told: the job's spec, translated to `python -m worker.training` config."""

from __future__ import annotations

from typing import Any

from app.config import Settings

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
