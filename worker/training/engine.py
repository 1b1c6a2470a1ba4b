"""One training run: devices, data, model, resume from checkpoint, fit, save, plot.

The order matters: devices first (the CPU can only be split before TensorFlow's runtime starts),
then the precision policy (layers take their dtype when built), then data and model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from app.core.plots import chart_title, history_png
from app.core.spec import TrainingSpec, resolve_bn_momentum, resolve_weight_decay

from .callbacks import EpochReporter, NanGuard, PolyDecay, TrainingFailure, optimizer_values
from .checkpoints import Checkpoint, CheckpointStore
from .config import UserError, learning_rate, replica_count
from .data import Dataset, load_dataset
from .devices import setup_devices
from .events import Reporter
from .layers import with_stock_layers
from .models import MODELS, build_model
from .pipeline import build_pipelines
from .uploaded import load_uploaded

# Measured on the 2-core CPU (AVX-512 BF16) with MiniGoogLeNet at batch 64: one step takes
# ~0.45 s, and steps_per_execution=4 was no faster than 1 (within noise), because per-step
# dispatch overhead is negligible next to the step. It would also coarsen the per-batch NaN
# check to every 4 batches. So one step per execution.
STEPS_PER_EXECUTION = 1


@dataclass(frozen=True)
class RunPaths:
    workdir: Path

    @property
    def checkpoints(self) -> Path:
        return self.workdir / "checkpoints"

    @property
    def model(self) -> Path:
        return self.workdir / "model.keras"

    @property
    def mean_image(self) -> Path:
        # Inference needs the same mean subtraction as training; model.keras does not hold it.
        return self.workdir / "mean_image.npy"


def train(
    config: TrainingSpec, workdir: Path, reporter: Reporter, plot_path: Path | None = None
) -> dict[str, Any]:
    """Train per `config` in `workdir`, resuming from its checkpoints; return the finished event.

    Raises UserError for bad settings or data, TrainingFailure for nan_loss and oom.
    """
    try:
        # Absolute, so the paths in events mean the same to a supervisor in another directory.
        plot = plot_path.absolute() if plot_path is not None else None
        return _train(config, RunPaths(workdir.absolute()), reporter, plot)
    except tf.errors.ResourceExhaustedError as error:
        raise TrainingFailure(
            "oom",
            f"out of memory with a global batch of {config.batch_size * replica_count(config)}; "
            f"lower batch_size (batch_size={config.batch_size}): {_first_line(error)}",
        ) from error


def _train(
    config: TrainingSpec, paths: RunPaths, reporter: Reporter, plot_path: Path | None
) -> dict[str, Any]:
    setup = setup_devices(config)
    keras.mixed_precision.set_global_policy(setup.precision)
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)  # Python, NumPy and TF: init and dropout

    reporter.info(f"[INFO] loading {config.dataset} data...")
    dataset = load_dataset(config.dataset)
    global_batch = config.batch_size * setup.replicas
    smoothing = config.label_smoothing > 0
    pipelines = build_pipelines(
        dataset, global_batch, config.augment, config.seed, one_hot=smoothing
    )
    bn_momentum = resolve_bn_momentum(config, len(dataset.x_train))
    weight_decay = resolve_weight_decay(config)

    with setup.strategy.scope():
        model, from_logits = _build_model(config, dataset, bn_momentum)
        optimizer = make_optimizer(config, learning_rate(config, 0, setup.replicas), weight_decay)
        # Sparse labels: the same loss as the seed's one-hot categorical crossentropy,
        # without a (N, classes) float label copy. Smoothing needs the one-hot rows.
        loss: Any = "sparse_categorical_crossentropy"
        if smoothing:
            loss = keras.losses.CategoricalCrossentropy(
                label_smoothing=config.label_smoothing, from_logits=from_logits
            )
        elif from_logits:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(
            optimizer=optimizer,
            loss=loss,
            metrics=["accuracy"],
            steps_per_execution=STEPS_PER_EXECUTION,
        )
        # Built now, not at the first step, so checkpointed slots can be restored into it.
        model.optimizer.build(model.trainable_variables)

    signature = {
        "model": model_label(config),
        "dataset": config.dataset,
        "input_shape": list(dataset.input_shape),
        "classes": dataset.classes,
        "params": int(model.count_params()),
    }
    store = CheckpointStore(paths.checkpoints)
    history: list[dict[str, Any]] = []
    checkpoint = store.latest()
    if checkpoint is not None:
        history = _restore(checkpoint, model, signature, config)
    initial_epoch = len(history)

    reporter.event(
        "started",
        replicas=setup.replicas,
        devices=setup.devices,
        precision=setup.precision,
        params=signature["params"],
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        input_shape=list(dataset.input_shape),
        classes=dataset.classes,
        train_images=len(dataset.x_train),
        test_images=len(dataset.x_test),
        global_batch=global_batch,
        steps_per_epoch=pipelines.steps_per_epoch,
        bn_momentum=bn_momentum,
        optimizer=config.optimizer,
        weight_decay=weight_decay,
        workdir=str(paths.workdir),
    )
    for record in history:
        reporter.event("epoch", **record, replayed=True)

    if initial_epoch < config.epochs:
        schedule = PolyDecay(config, setup.replicas)
        callbacks = [
            schedule,
            NanGuard(lambda: schedule.current_lr),
            EpochReporter(
                store, reporter, history, signature, lambda: schedule.current_lr, setup.replicas
            ),
        ]
        model.fit(
            pipelines.train,
            validation_data=pipelines.validation,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles; Keras cannot shuffle a tf.data.Dataset
            verbose=0,
        )

    paths.workdir.mkdir(parents=True, exist_ok=True)
    with_stock_layers(model).save(paths.model)
    np.save(paths.mean_image, pipelines.mean_image)
    plotted = None
    if plot_path is not None:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot_path.write_bytes(history_png(history, chart_title(model_label(config), dataset.name)))
        plotted = str(plot_path)
    finished = {
        "epochs": len(history),
        "model_path": str(paths.model),
        "plot_path": plotted,
        # What the model says of the first test images: the saved model.keras, loaded
        # anywhere with the mean image subtracted, must say the same.
        "test_predictions": _predicted_classes(model, dataset.x_test[:10], pipelines.mean_image),
    }
    reporter.event("finished", **finished)
    return finished


def model_label(config: TrainingSpec) -> str:
    """A zoo model's name, or an uploaded architecture's file name (its content hash when
    the service passes it: the same on every host, as checkpoints need)."""
    return config.model if config.model in MODELS else Path(str(config.model)).name


def _build_model(
    config: TrainingSpec, dataset: Dataset, bn_momentum: float
) -> tuple[keras.Model, bool]:
    """The model to train and whether it outputs logits (not probabilities)."""
    if config.model in MODELS:
        return build_model(
            str(config.model), dataset.input_shape, dataset.classes, bn_momentum
        ), False
    uploaded = load_uploaded(Path(str(config.model)), config.init)
    model = uploaded.model
    takes = tuple(model.inputs[0].shape[1:])
    if len(takes) != 3 or any(
        side is not None and side != want
        for side, want in zip(takes, dataset.input_shape, strict=True)
    ):
        raise UserError(
            f"model: it takes inputs shaped {list(takes)}; the dataset gives "
            f"{list(dataset.input_shape)}"
        )
    if model.outputs[0].shape[-1] != dataset.classes:
        raise UserError(
            f"model: it outputs {model.outputs[0].shape[-1]} classes; the dataset has "
            f"{dataset.classes}"
        )
    return model, uploaded.from_logits


def _predicted_classes(model: keras.Model, images: np.ndarray, mean: np.ndarray) -> list[int]:
    probabilities = model.predict(images.astype(np.float32) - mean, verbose=0)
    return [int(label) for label in np.argmax(probabilities, axis=-1)]


def make_optimizer(config: TrainingSpec, lr: float, weight_decay: float) -> keras.Optimizer:
    """The spec's optimizer; `weight_decay` 0 is none (Keras applies decay when it is set)."""
    decay = weight_decay or None
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr, weight_decay=decay)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay)
    return keras.optimizers.SGD(learning_rate=lr, momentum=config.momentum, weight_decay=decay)


def _restore(
    checkpoint: Checkpoint, model: keras.Model, signature: dict[str, Any], config: TrainingSpec
) -> list[dict[str, Any]]:
    """Load weights and optimizer state; return the history recorded so far."""
    saved = checkpoint.state.get("signature", {})
    for key in ("model", "input_shape", "classes", "params"):
        if saved.get(key) != signature[key]:
            raise UserError(
                f"the checkpoint {checkpoint.path} is from a different run ({key} "
                f"{saved.get(key)!r}, now {signature[key]!r}); use another --workdir"
            )
    if checkpoint.epoch > config.epochs:
        raise UserError(
            f"the workdir already holds {checkpoint.epoch} epochs, more than epochs="
            f"{config.epochs}; use another --workdir or raise --epochs"
        )
    history = checkpoint.history
    if [record["epoch"] for record in history] != list(range(1, checkpoint.epoch + 1)):
        raise UserError(f"the checkpoint {checkpoint.path} has an inconsistent history")
    model.set_weights(checkpoint.model_weights)
    variables = model.optimizer.variables
    current = optimizer_values(model.optimizer)
    shapes_now = [value.shape for value in current]
    shapes_saved = [value.shape for value in checkpoint.optimizer_variables]
    if shapes_now != shapes_saved:
        raise UserError(
            f"the checkpoint {checkpoint.path} holds optimizer state of another shape "
            "(different precision or optimizer?); use another --workdir"
        )
    for variable, value in zip(variables, checkpoint.optimizer_variables, strict=True):
        variable.assign(value)
    return history


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
