"""Keras callbacks: the seed's poly LR decay, a per-batch NaN guard, and per-epoch checkpoint
plus event reporting."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from app.core.spec import TrainingSpec

from .checkpoints import CheckpointStore
from .config import learning_rate
from .events import Reporter


class TrainingFailure(Exception):
    """Training stopped for a reason the supervisor records (`reason`: nan_loss, oom)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PolyDecay(keras.callbacks.Callback):
    """The seed's LearningRateScheduler(poly_decay), plus optional linear scaling.

    Sets the LR at the start of each 0-based epoch `e` from config.learning_rate(config, e, ...),
    so a run resumed with initial_epoch=k continues the schedule exactly at epoch k.
    """

    def __init__(self, config: TrainingSpec, replicas: int) -> None:
        super().__init__()
        self.config = config
        self.replicas = replicas
        self.current_lr = learning_rate(config, 0, replicas)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.current_lr = learning_rate(self.config, epoch, self.replicas)
        self.model.optimizer.learning_rate.assign(self.current_lr)


class NanGuard(keras.callbacks.Callback):
    """Stops at the first batch whose loss is NaN or infinite, naming epoch, batch and LR.

    Keras' logged loss is the epoch's running mean, which turns non-finite at the first bad
    batch and stays so: checking it per batch finds that batch.
    """

    def __init__(self, lr_of_epoch: Callable[[], float]) -> None:
        super().__init__()
        self.lr_of_epoch = lr_of_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = float(np.asarray((logs or {}).get("loss", 0.0)))
        if not math.isfinite(loss):
            what = "NaN" if math.isnan(loss) else "infinite"
            raise TrainingFailure(
                "nan_loss",
                f"loss became {what} at epoch {self.epoch + 1} batch {batch + 1}; "
                f"lower the learning rate (lr={self.lr_of_epoch():.6g})",
            )


class EpochReporter(keras.callbacks.Callback):
    """At each epoch end: write the checkpoint, then the checkpoint event, then the epoch event.

    That order means a supervisor never records an epoch that a resume would redo.
    """

    def __init__(
        self,
        store: CheckpointStore,
        reporter: Reporter,
        history: list[dict[str, Any]],
        signature: dict[str, Any],
        lr_of_epoch: Callable[[], float],
        replicas: int,
    ) -> None:
        super().__init__()
        self.store = store
        self.reporter = reporter
        self.history = history
        self.signature = signature
        self.lr_of_epoch = lr_of_epoch
        self.replicas = replicas
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        record = {
            "epoch": epoch + 1,
            "loss": _number(logs.get("loss")),
            "accuracy": _number(logs.get("accuracy")),
            "val_loss": _number(logs.get("val_loss")),
            "val_accuracy": _number(logs.get("val_accuracy")),
            "lr": float(self.lr_of_epoch()),
            "seconds": round(time.perf_counter() - self.started, 3),
            "replicas": self.replicas,
        }
        val_loss = record["val_loss"]
        if val_loss is not None and not math.isfinite(val_loss):
            # Training loss can stay finite for a few batches after the weights have blown up
            # (lr=1000 on synthetic: loss 1e11, val_loss inf); no later epoch can recover.
            raise TrainingFailure(
                "nan_loss",
                f"validation loss became {'NaN' if math.isnan(val_loss) else 'infinite'} at "
                f"epoch {epoch + 1}; lower the learning rate (lr={self.lr_of_epoch():.6g})",
            )
        self.history.append(record)
        path = self.store.save(
            epoch + 1,
            [np.asarray(w) for w in self.model.get_weights()],
            [np.asarray(v) for v in optimizer_values(self.model.optimizer)],
            {"history": self.history, "signature": self.signature},
        )
        self.reporter.event("checkpoint", epoch=epoch + 1, path=str(path))
        self.reporter.event("epoch", **record, replayed=False)


def optimizer_values(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray]:
    """Current values of every optimizer variable (iterations, LR, momentum slots, ...)."""
    return [np.asarray(variable.numpy()) for variable in optimizer.variables]


def _number(value: Any) -> float | None:
    return None if value is None else float(np.asarray(value))
