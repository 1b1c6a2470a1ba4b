"""MiniGoogLeNet, layer for layer as the seed's book code (Zhang et al. 2017's "Miniception").

The seed (PyImageSearch, "multi-GPU training with Keras") builds conv-BN-ReLU modules,
two-branch inception modules (1x1 | 3x3) and downsample modules (3x3/2 conv | 3x3/2 max pool),
ending in a 7x7 average pool, dropout 0.5 and a dense softmax classifier. For 32x32x3 inputs and
10 classes this has exactly 1,656,250 parameters; a test pins that number so the recipe cannot
drift silently.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from app.core.spec import BN_MOMENTUM_BOOK

from .layers import FusedBatchNormalization

MODELS = ("minigooglenet",)
INPUT_SIZE = 32  # the 7x7 average pool below needs a 7x7 map, i.e. a 32x32 input

# Makes one batch-normalisation layer; the model builder binds its class and momentum.
NormFactory = Callable[[], keras.layers.Layer]


def _conv_module(
    x, filters: int, kernel: int, strides: int, norm: NormFactory, padding: str = "same"
):
    x = layers.Conv2D(filters, (kernel, kernel), strides=(strides, strides), padding=padding)(x)
    x = norm()(x)
    return layers.Activation("relu")(x)


def _inception_module(x, filters_1x1: int, filters_3x3: int, norm: NormFactory):
    branch_1x1 = _conv_module(x, filters_1x1, 1, 1, norm)
    branch_3x3 = _conv_module(x, filters_3x3, 3, 1, norm)
    return layers.Concatenate(axis=-1)([branch_1x1, branch_3x3])


def _downsample_module(x, filters: int, norm: NormFactory):
    branch_conv = _conv_module(x, filters, 3, 2, norm, padding="valid")
    branch_pool = layers.MaxPooling2D((3, 3), strides=(2, 2))(x)
    return layers.Concatenate(axis=-1)([branch_conv, branch_pool])


def build_minigooglenet(
    input_shape: tuple[int, int, int] = (32, 32, 3),
    classes: int = 10,
    bn_momentum: float = BN_MOMENTUM_BOOK,
    batch_norm: type[keras.layers.BatchNormalization] = FusedBatchNormalization,
) -> keras.Model:
    """Build MiniGoogLeNet for NHWC images of `input_shape` (must be 32x32) and `classes` labels.

    `bn_momentum` only sets how fast BatchNormalization's inference statistics follow the
    training batches; it changes no layer and no parameter count. `batch_norm` is the layer
    class: the fused one, or Keras' own (`bench/train_throughput.py --batch-norm stock`).

    Uses whatever Keras dtype policy is active, except the final softmax, which always runs in
    float32: under mixed precision a bfloat16/float16 softmax loses the small probabilities
    that cross-entropy needs.
    """
    height, width, channels = input_shape
    if (height, width) != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(
            f"MiniGoogLeNet needs {INPUT_SIZE}x{INPUT_SIZE} inputs (its 7x7 average pool), "
            f"got {height}x{width}"
        )
    if classes < 2:
        raise ValueError(f"classes must be at least 2, got {classes}")

    inputs = keras.Input(shape=(height, width, channels))

    def norm() -> keras.layers.Layer:
        return batch_norm(axis=-1, momentum=bn_momentum)

    x = _conv_module(inputs, 96, 3, 1, norm)
    x = _inception_module(x, 32, 32, norm)
    x = _inception_module(x, 32, 48, norm)
    x = _downsample_module(x, 80, norm)
    x = _inception_module(x, 112, 48, norm)
    x = _inception_module(x, 96, 64, norm)
    x = _inception_module(x, 80, 80, norm)
    x = _inception_module(x, 48, 96, norm)
    x = _downsample_module(x, 96, norm)
    x = _inception_module(x, 176, 160, norm)
    x = _inception_module(x, 176, 160, norm)
    x = layers.AveragePooling2D((7, 7))(x)
    x = layers.Dropout(0.5)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(classes)(x)
    outputs = layers.Activation("softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="minigooglenet")


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    classes: int,
    bn_momentum: float = BN_MOMENTUM_BOOK,
    batch_norm: type[keras.layers.BatchNormalization] = FusedBatchNormalization,
) -> keras.Model:
    """Build the model called `name` (see MODELS)."""
    if name == "minigooglenet":
        return build_minigooglenet(input_shape, classes, bn_momentum, batch_norm)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
