"""tf.data input pipelines: the seed's preprocessing and augmentation, done on batches in graph.

The seed converts CIFAR-10 to float64, subtracts the per-pixel mean image of the training split
and feeds Keras' ImageDataGenerator (shift 0.1, horizontal flip, nearest fill) from Python, one
image at a time. Here the images stay uint8 in memory (4x smaller than float32, 8x than float64),
and each batch is cast, mean-subtracted and augmented by TensorFlow ops on whole batches, in
parallel with the training step, prefetched.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from .config import UserError
from .data import Dataset

SHIFT = 0.1  # the seed's width_shift_range / height_shift_range


@dataclass(frozen=True)
class Pipelines:
    train: tf.data.Dataset
    validation: tf.data.Dataset
    mean_image: np.ndarray  # float32 (H, W, C), subtracted from every input
    steps_per_epoch: int


def mean_image(images: np.ndarray) -> np.ndarray:
    """Per-pixel mean of `images` (N, H, W, C), accumulated in float64 in chunks.

    Chunked so CIFAR-10 does not need a 50000x32x32x3 float64 copy (1.2 GB) like the seed's.
    """
    total = np.zeros(images.shape[1:], dtype=np.float64)
    for start in range(0, len(images), 4096):
        total += images[start : start + 4096].sum(axis=0, dtype=np.float64)
    return (total / len(images)).astype(np.float32)


def build_pipelines(
    dataset: Dataset, global_batch: int, augment: bool, seed: int | None = None
) -> Pipelines:
    """Training (shuffled, augmented, full batches) and validation (test split) pipelines."""
    train_count = len(dataset.x_train)
    if train_count < global_batch:
        raise UserError(
            f"the training split has {train_count} images, fewer than one global batch of "
            f"{global_batch} (batch_size x replicas); lower batch_size or use more data"
        )
    mean = mean_image(dataset.x_train)
    mean_tensor = tf.constant(mean)
    augmenter = _augmenter(seed) if augment else None

    def prepare(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.cast(images, tf.float32) - mean_tensor
        return images, labels

    def prepare_augmented(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images, labels = prepare(images, labels)
        # Mean first, then shift: like the seed, whose generator sees mean-subtracted data,
        # so "nearest" fill repeats mean-subtracted edge pixels.
        if augmenter is not None:
            images = augmenter(images, training=True)
        return images, labels

    autotune = tf.data.AUTOTUNE
    # from_tensor_slices keeps the uint8 arrays in memory: the data is cached from the start
    # and each epoch only re-shuffles indices into it.
    train = (
        tf.data.Dataset.from_tensor_slices((dataset.x_train, dataset.y_train))
        .shuffle(train_count, seed=seed, reshuffle_each_iteration=True)
        # drop_remainder: every step sees a full global batch (the seed's len // batch steps),
        # which MirroredStrategy splits evenly across replicas.
        .batch(global_batch, drop_remainder=True)
        .map(prepare_augmented, num_parallel_calls=autotune, deterministic=seed is not None)
        .prefetch(autotune)
    )
    validation = (
        tf.data.Dataset.from_tensor_slices((dataset.x_test, dataset.y_test))
        .batch(global_batch)
        .map(prepare, num_parallel_calls=autotune)
        .prefetch(autotune)
    )
    options = tf.data.Options()
    # In-memory data needs no file-based sharding; saying so silences a per-run warning.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return Pipelines(
        train=train.with_options(options),
        validation=validation.with_options(options),
        mean_image=mean,
        steps_per_epoch=train_count // global_batch,
    )


def _augmenter(seed: int | None) -> keras.Sequential:
    """The seed's ImageDataGenerator(width/height_shift_range=0.1, horizontal_flip=True,
    fill_mode="nearest") as Keras preprocessing layers, which run as TF ops on whole batches."""
    return keras.Sequential(
        [
            keras.layers.RandomTranslation(SHIFT, SHIFT, fill_mode="nearest", seed=seed),
            keras.layers.RandomFlip("horizontal", seed=None if seed is None else seed + 1),
        ],
        name="augment",
    )
