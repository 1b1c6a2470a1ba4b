"""tf.data input pipelines: the seed's preprocessing and augmentation, done on batches in graph.

The seed converts CIFAR-10 to float64, subtracts the per-pixel mean image of the training split
and feeds Keras' ImageDataGenerator (shift 0.1, horizontal flip, nearest fill) from Python, one
image at a time. Here the images stay uint8 in memory (4x smaller than float32, 8x than float64),
and each batch is cast, mean-subtracted and augmented by TensorFlow ops on whole batches, in
parallel with the training step, prefetched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from app.core.spec import Augment

from .config import UserError
from .data import Dataset

SHIFT = 0.1  # the seed's width_shift_range / height_shift_range
PAD = 4  # pad_crop: pixels of zeros on each side before the random crop (He et al. 2016)


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
    dataset: Dataset,
    global_batch: int,
    augment: Augment,
    seed: int | None = None,
    one_hot: bool = False,
) -> Pipelines:
    """Training (shuffled, augmented, full batches) and validation (test split) pipelines.
    `one_hot`: labels as one-hot rows (what a label-smoothed loss needs), else class ids."""
    train_count = len(dataset.x_train)
    if train_count < global_batch:
        raise UserError(
            f"the training split has {train_count} images, fewer than one global batch of "
            f"{global_batch} (batch_size x replicas); lower batch_size or use more data"
        )
    mean = mean_image(dataset.x_train)
    mean_tensor = tf.constant(mean)
    augmenter = _augmenter(augment, seed)

    def prepare(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.cast(images, tf.float32) - mean_tensor
        if one_hot:
            labels = tf.one_hot(labels, dataset.classes)
        return images, labels

    def prepare_augmented(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images, labels = prepare(images, labels)
        # Mean first, then shift: like the seed, whose generator sees mean-subtracted data,
        # so "nearest" fill repeats mean-subtracted edge pixels (and pad_crop's zeros are
        # the mean image).
        if augmenter is not None:
            images = augmenter(images)
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


def _augmenter(augment: Augment, seed: int | None) -> Callable[[tf.Tensor], tf.Tensor] | None:
    if augment == "none":
        return None
    flip = keras.layers.RandomFlip("horizontal", seed=None if seed is None else seed + 1)
    if augment == "pad_crop":
        return lambda images: flip(pad_and_crop(images, PAD, seed), training=True)
    # The seed's ImageDataGenerator(width/height_shift_range=0.1, horizontal_flip=True,
    # fill_mode="nearest") as Keras preprocessing layers, which run as TF ops on whole batches.
    shift_flip = keras.Sequential(
        [keras.layers.RandomTranslation(SHIFT, SHIFT, fill_mode="nearest", seed=seed), flip],
        name="augment",
    )
    return lambda images: shift_flip(images, training=True)


def pad_and_crop(images: tf.Tensor, pad: int, seed: int | None = None) -> tf.Tensor:
    """Each image of the batch padded with `pad` zeros on every side, then cropped back to
    its size at a random offset of its own (0..2 x pad in each direction)."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.random.uniform([batch, 2], 0, 2 * pad + 1, dtype=tf.int32, seed=seed)
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis, :]  # (batch, height)
    cols = offsets[:, 1:] + tf.range(width)[tf.newaxis, :]  # (batch, width)
    picked_rows = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(picked_rows, cols, axis=2, batch_dims=1)
