"""Batch normalisation on TensorFlow's fused kernel, and the way back to stock Keras layers.

Keras 3's BatchNormalization upcasts bfloat16/float16 activations to float32 and normalises
with a dozen separate element-wise ops, each of them again in the backward pass. Under
`mixed_bfloat16` on this project's 2-core development CPU that was about half of MiniGoogLeNet's
training step. TensorFlow's FusedBatchNormV3 does the same work in one kernel (oneDNN on CPU,
cuDNN on GPU), reading the activations in their own dtype and keeping the statistics in float32.
Keras 2 used the same kernel by default (`fused=True`), which is what the seed's book code ran.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="trainyard")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` for 4-D channels-last inputs, on the fused kernel.

    Same weights (gamma, beta, moving mean and variance), same config, same moving-average
    update as the Keras layer (the biased batch variance, as Keras 3 uses), so parameter counts
    and checkpoints are those of the stock layer. Anything the fused kernel cannot express
    (masks, renorm, synchronized statistics, other ranks or axes, no scale or centre) falls
    back to the Keras implementation.
    """

    def _fusable(self, inputs: Any, mask: Any) -> bool:
        return (
            mask is None
            and not self.renorm
            and not self.synchronized
            and self.scale
            and self.center
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        if not (training and self.trainable):
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                gamma,
                beta,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon,
                is_training=False,
            )
            return tf.cast(outputs, self.compute_dtype)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, is_training=True
        )
        # In training mode the kernel returns the Bessel-corrected variance (n / (n - 1)) for
        # the moving average; Keras 3 averages the biased one, which normalised the batch.
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(
            self.moving_mean * momentum + tf.cast(mean, self.moving_mean.dtype) * (1 - momentum)
        )
        self.moving_variance.assign(
            self.moving_variance * momentum
            + tf.cast(variance, self.moving_variance.dtype) * (1 - momentum)
        )
        return tf.cast(outputs, self.compute_dtype)


def with_stock_layers(model: keras.Model) -> keras.Model:
    """A copy of `model` with every FusedBatchNormalization swapped for Keras' own layer.

    The saved `model.keras` a user downloads then loads with plain `keras.saving.load_model`,
    no Trainyard code needed; the weights are the same arrays in the same order.
    """

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, FusedBatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    stock = keras.models.clone_model(model, clone_function=clone)
    stock.set_weights(model.get_weights())
    return stock
