"""The model zoo: MiniGoogLeNet, layer for layer as the seed's book code (Zhang et al. 2017's
"Miniception"), the default; ResNet-20 and ResNet-56 (He et al. 2016, the CIFAR-10 networks of
section 4.2); a VGG-style net; a small MLP. The names, descriptions and parameter counts the
API lists are in app/core/zoo.py (no TensorFlow there); a test holds the two together.

Every model here uses only stock Keras layers (FusedBatchNormalization is swapped back for
Keras' own when saved), so a downloaded model.keras loads with plain Keras.

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
from app.core.zoo import ZOO

from .layers import FusedBatchNormalization

MODELS = tuple(ZOO)
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


def _resnet_block(x, filters: int, strides: int, norm: NormFactory):
    """A basic block: two 3x3 conv-BN pairs and the shortcut, added before the last ReLU."""
    shortcut = x
    y = layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, kernel_initializer="he_normal"
    )(x)
    y = layers.Activation("relu")(norm()(y))
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(y)
    y = norm()(y)
    if strides != 1 or x.shape[-1] != filters:
        # Projection shortcut (the paper's option B): a 1x1 conv where the shape changes. The
        # paper's CIFAR nets pad with zeros instead (option A), which Keras has no stock layer
        # for; B adds about 1,600 parameters (0.6%) to ResNet-20.
        shortcut = layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, kernel_initializer="he_normal"
        )(x)
        shortcut = norm()(shortcut)
    return layers.Activation("relu")(layers.Add()([y, shortcut]))


def build_resnet(
    depth: int, input_shape: tuple[int, int, int], classes: int, norm: NormFactory
) -> keras.Model:
    """He et al.'s CIFAR ResNet of `depth` = 6n + 2 layers: a 3x3 conv with 16 filters, three
    stages of n blocks with 16, 32 and 64 filters (the 2nd and 3rd start with stride 2),
    global average pooling and the softmax classifier."""
    blocks = (depth - 2) // 6
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(inputs)
    x = layers.Activation("relu")(norm()(x))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            x = _resnet_block(x, filters, 2 if stage > 0 and block == 0 else 1, norm)
    x = layers.GlobalAveragePooling2D()(x)
    return _classifier(inputs, x, classes, f"resnet{depth}")


def build_vgg(input_shape: tuple[int, int, int], classes: int, norm: NormFactory) -> keras.Model:
    """VGG-style (Simonyan and Zisserman 2015) with batch normalisation: three stages of two
    3x3 conv-BN-ReLU (64, 128, 256 filters), each closed by a 2x2 max pool, then global
    average pooling, dropout 0.5 and the softmax classifier."""
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for filters in (64, 128, 256):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.Activation("relu")(norm()(x))
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.5)(x)
    return _classifier(inputs, x, classes, "vgg")


def build_mlp(input_shape: tuple[int, int, int], classes: int) -> keras.Model:
    """A multi-layer perceptron for tiny inputs: scale, flatten, 512 and 256 ReLU units with dropout
    0.2 each, the softmax classifier."""
    inputs = keras.Input(shape=input_shape)
    # The pipeline feeds mean-subtracted pixels (about -255..255): without this scaling the
    # first Dense layer's outputs ran into the hundreds and SGD at lr 0.005 diverged to NaN
    # within an epoch on synthetic data. No parameters: the zoo's count is unchanged.
    x = layers.Flatten()(layers.Rescaling(1 / 255)(inputs))
    for units in (512, 256):
        x = layers.Dense(units, activation="relu")(x)
        x = layers.Dropout(0.2)(x)
    return _classifier(inputs, x, classes, "mlp")


def _classifier(inputs, x, classes: int, name: str) -> keras.Model:
    # The softmax in float32 whatever the policy (see build_minigooglenet).
    outputs = layers.Activation("softmax", dtype="float32")(layers.Dense(classes)(x))
    return keras.Model(inputs, outputs, name=name)


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    classes: int,
    bn_momentum: float = BN_MOMENTUM_BOOK,
    batch_norm: type[keras.layers.BatchNormalization] = FusedBatchNormalization,
) -> keras.Model:
    """Build the zoo model called `name` (see MODELS) for `input_shape` and `classes`."""
    if classes < 2:
        raise ValueError(f"classes must be at least 2, got {classes}")

    def norm() -> keras.layers.Layer:
        return batch_norm(axis=-1, momentum=bn_momentum)

    if name == "minigooglenet":
        return build_minigooglenet(input_shape, classes, bn_momentum, batch_norm)
    if name in ("resnet20", "resnet56"):
        return build_resnet(int(name.removeprefix("resnet")), input_shape, classes, norm)
    if name == "vgg":
        return build_vgg(input_shape, classes, norm)
    if name == "mlp":
        return build_mlp(input_shape, classes)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
