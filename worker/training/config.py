"""Training job settings, validated without importing TensorFlow.

The API and the Celery worker import this module to check a job spec, so it must stay
importable in processes that have no TensorFlow installed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

BUILTIN_DATASETS = ("digits", "synthetic", "cifar10")
MODELS = ("minigooglenet",)
LR_SCALINGS = ("none", "linear")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")

# With lr_scaling="linear" the learning rate ramps from the single-replica LR up to
# LR x replicas over this many epochs (Goyal et al. 2017, "gradual warm-up", use 5 epochs),
# shortened to a tenth of the run for short runs and skipped for runs under 10 epochs.
MAX_WARMUP_EPOCHS = 5

# Upper bounds that keep a typo (epochs=70000) from holding a GPU for months.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_REPLICAS = 64


class UserError(ValueError):
    """A problem the person who asked for the training can fix (bad setting, missing data)."""


@dataclass
class TrainConfig:
    """Everything that defines one training run; defaults are the seed's recipe."""

    model: str = "minigooglenet"
    dataset: str = "digits"  # "digits" | "synthetic" | "cifar10" | path to an .npz file
    gpus: int = 1
    cpu_replicas: int = 0
    epochs: int = 70
    lr: float = 0.005
    batch_size: int = 64  # per replica; the global batch is batch_size x replicas
    momentum: float = 0.9
    # BatchNormalization's moving-statistics momentum; 0.99 is Keras' default, the book's.
    bn_momentum: float = 0.99
    augment: bool = True
    lr_power: float = 1.0
    lr_scaling: str = "none"
    mixed_precision: str = "auto"
    seed: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a JSON-like mapping, rejecting unknown keys by name."""
        if not isinstance(values, dict):
            raise UserError(f"config must be a JSON object, got {type(values).__name__}")
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise UserError(
                f"unknown config field(s) {', '.join(unknown)}; "
                f"known: {', '.join(cls.field_names())}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.field_names()}

    @property
    def warmup_epochs(self) -> int:
        """Epochs of linear LR warm-up (0 unless lr_scaling == "linear")."""
        if self.lr_scaling != "linear":
            return 0
        return min(MAX_WARMUP_EPOCHS, self.epochs // 10)

    def validate(self) -> None:
        _check_choice("model", self.model, MODELS)
        if not isinstance(self.dataset, str) or not self.dataset:
            raise UserError("dataset must be a name (digits, synthetic, cifar10) or an .npz path")
        if self.dataset not in BUILTIN_DATASETS and not self.dataset.endswith(".npz"):
            raise UserError(
                f"dataset {self.dataset!r} is neither one of {', '.join(BUILTIN_DATASETS)} "
                "nor a path to an .npz file"
            )
        _check_int("gpus", self.gpus, 0, MAX_REPLICAS)
        _check_int("cpu_replicas", self.cpu_replicas, 0, MAX_REPLICAS)
        if self.gpus > 0 and self.cpu_replicas > 0:
            raise UserError(
                f"gpus={self.gpus} and cpu_replicas={self.cpu_replicas} cannot be combined: "
                "train on GPUs or on CPU replicas (set gpus=0 for CPU)"
            )
        _check_int("epochs", self.epochs, 1, MAX_EPOCHS)
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_float("lr", self.lr, low=0.0, low_open=True)
        _check_float("momentum", self.momentum, low=0.0, high=1.0)
        _check_float(
            "bn_momentum", self.bn_momentum, low=0.0, high=1.0, low_open=True, high_open=True
        )
        _check_float("lr_power", self.lr_power, low=0.0)
        if not isinstance(self.augment, bool):
            raise UserError(f"augment must be true or false, got {self.augment!r}")
        _check_choice("lr_scaling", self.lr_scaling, LR_SCALINGS)
        _check_choice("mixed_precision", self.mixed_precision, PRECISIONS)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**31 - 1)
        if self.name is not None and (not isinstance(self.name, str) or len(self.name) > 200):
            raise UserError("name must be a string of at most 200 characters")

    def replicas(self) -> int:
        """How many model replicas train in lockstep (1 for plain CPU training)."""
        return self.gpus or self.cpu_replicas or 1

    def learning_rate(self, epoch: int, replicas: int) -> float:
        """LR for the 0-based `epoch`: the seed's poly decay, times linear scaling if asked.

        Seed: base * (1 - epoch / epochs) ** power. With lr_scaling="linear" the base becomes
        lr x replicas, reached by a linear ramp from lr over `warmup_epochs` epochs.
        """
        decay = (1.0 - epoch / float(self.epochs)) ** self.lr_power
        base = self.lr
        if self.lr_scaling == "linear" and replicas > 1:
            warmup = self.warmup_epochs
            target = self.lr * replicas
            base = self.lr + (target - self.lr) * epoch / warmup if epoch < warmup else target
        return base * decay


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass; `gpus=True` is a mistake, not 1 GPU.
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise UserError(f"{name} must be between {low} and {high}, got {value}")


def _check_float(
    name: str,
    value: object,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise UserError(f"{name} must be a number, got {value!r}")
    number = float(value)
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if not math.isfinite(number) or too_low or too_high:
        low_mark = "(" if low_open else "["
        high_mark = ")" if high_open else "]"
        raise UserError(f"{name} must be in {low_mark}{low}, {high}{high_mark}, got {value}")
