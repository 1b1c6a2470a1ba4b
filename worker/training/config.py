"""The trainer's settings: the job spec (app/core/spec.py), loaded and explained for the trainer.

`load_config` validates a JSON config file's values and the flags into a `TrainingSpec`, in
the trainer's context (a dataset may be a local .npz path), and turns the spec's validation
errors into one `UserError` that names each field at fault. The learning-rate schedule the
trainer derives from a spec lives here too. Only the spec and pydantic are imported: settings
are checked before TensorFlow loads, so a typo fails in a second, not after the import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from app.core.spec import LOCAL_FILES, JobSpec, TrainingSpec

# With lr_scaling="linear" the learning rate ramps from the single-replica LR up to
# LR x replicas over this many epochs (Goyal et al. 2017, "gradual warm-up", use 5 epochs),
# shortened to a tenth of the run for short runs and skipped for runs under 10 epochs.
MAX_WARMUP_EPOCHS = 5


class UserError(ValueError):
    """A problem the person who asked for the training can fix (bad setting, missing data)."""


def load_config(values: Mapping[str, Any]) -> TrainingSpec:
    """The spec for `values` (a config file's fields, overridden by flags); UserError if bad."""
    try:
        spec = TrainingSpec.model_validate(dict(values), context={LOCAL_FILES: True})
    except ValidationError as error:
        raise UserError(describe_errors(error)) from error
    if isinstance(spec.dataset, int):  # only the service knows where uploads are kept
        raise UserError(
            f"dataset: {spec.dataset} is an uploaded dataset's id, which only the service "
            "resolves; give the path of an .npz file instead"
        )
    if isinstance(spec.model, int):
        raise UserError(
            f"model: {spec.model} is an uploaded model's id, which only the service resolves; "
            "give the path of a .keras or model JSON file instead"
        )
    if spec.init == "uploaded" and not str(spec.model).endswith(".keras"):
        raise UserError("init: 'uploaded' takes the weights of a .keras file given as model")
    return spec


def describe_errors(error: ValidationError) -> str:
    """One "field: reason" part per field at fault, e.g. "epochs: Input should be less than or
    equal to 1000". A field with a union type (bn_momentum: "auto" or a number) fails once per
    alternative; its reasons are joined with "or"."""
    reasons: dict[str, list[str]] = {}
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "config"
        reason = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden" and field in JobSpec.model_fields:
            reason = "only the service takes this field (trainyard submit), not the trainer"
        reasons.setdefault(field, []).append(reason)
    return "; ".join(f"{field}: {' or '.join(texts)}" for field, texts in reasons.items())


def replica_count(config: TrainingSpec) -> int:
    """How many model replicas train in lockstep (1 for plain CPU training)."""
    return config.gpus or config.cpu_replicas or 1


def warmup_epochs(config: TrainingSpec) -> int:
    """Epochs of linear LR warm-up (0 unless lr_scaling == "linear")."""
    if config.lr_scaling != "linear":
        return 0
    return min(MAX_WARMUP_EPOCHS, config.epochs // 10)


def learning_rate(config: TrainingSpec, epoch: int, replicas: int) -> float:
    """LR for the 0-based `epoch`: the seed's poly decay, times linear scaling if asked.

    Seed: lr * (1 - epoch / epochs) ** lr_power. With lr_scaling="linear" the base becomes
    lr x replicas, reached by a linear ramp from lr over `warmup_epochs` epochs.
    """
    decay = (1.0 - epoch / float(config.epochs)) ** config.lr_power
    base = config.lr
    if config.lr_scaling == "linear" and replicas > 1:
        warmup = warmup_epochs(config)
        target = config.lr * replicas
        base = config.lr + (target - config.lr) * epoch / warmup if epoch < warmup else target
    return base * decay
