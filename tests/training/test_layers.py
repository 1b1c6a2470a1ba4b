"""The fused batch normalisation must be Keras' BatchNormalization, only faster."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.training


@pytest.fixture(params=["float32", "mixed_bfloat16"])
def policy(request: pytest.FixtureRequest) -> Iterator[str]:
    import keras

    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def test_fused_batch_norm_matches_keras_forward_backward_and_moving_statistics(
    policy: str,
) -> None:
    import keras
    import tensorflow as tf

    from worker.training.layers import FusedBatchNormalization

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (8, 5, 5, 6)).astype("float32"))
    # A loss whose gradient with respect to the inputs is not ~0 (sum(y**2) would be).
    weights = tf.constant(rng.normal(0.0, 1.0, (8, 5, 5, 6)).astype("float32"))
    stock = keras.layers.BatchNormalization(momentum=0.9)
    fused = FusedBatchNormalization(momentum=0.9)
    stock.build(x.shape)
    fused.build(x.shape)
    stock.gamma.assign(rng.normal(1.0, 0.2, 6).astype("float32"))
    stock.beta.assign(rng.normal(0.0, 0.2, 6).astype("float32"))
    fused.set_weights(stock.get_weights())

    def loss(y: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(tf.cast(y, tf.float32) * weights)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_stock, y_fused = stock(x, training=True), fused(x, training=True)
        loss_stock, loss_fused = loss(y_stock), loss(y_fused)
    assert y_fused.dtype == y_stock.dtype == ("bfloat16" if policy != "float32" else "float32")

    tolerance = 1e-5 if policy == "float32" else 2e-2  # bfloat16 keeps 8 bits of mantissa

    def close(a: object, b: object) -> None:
        np.testing.assert_allclose(
            np.asarray(tf.cast(a, tf.float32)),
            np.asarray(tf.cast(b, tf.float32)),
            rtol=tolerance,
            atol=tolerance,
        )

    close(y_fused, y_stock)
    for grad_fused, grad_stock in zip(
        tape.gradient(loss_fused, [x, fused.gamma, fused.beta]),
        tape.gradient(loss_stock, [x, stock.gamma, stock.beta]),
        strict=True,
    ):
        close(grad_fused, grad_stock)
    # The moving averages after one step: Keras 3 averages the biased batch variance.
    for updated_fused, updated_stock in zip(fused.get_weights(), stock.get_weights(), strict=True):
        np.testing.assert_allclose(updated_fused, updated_stock, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused.moving_variance.numpy(), 1.0)  # they did move
    close(fused(x, training=False), stock(x, training=False))


def test_saved_model_loads_with_plain_keras(tmp_path: Path) -> None:
    import keras

    from worker.training.layers import FusedBatchNormalization, with_stock_layers

    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = FusedBatchNormalization()(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(1).normal(size=(3, 6, 6, 3)).astype("float32")
    model.compile(optimizer="sgd", loss="mse")
    model.fit(images, np.zeros((3, 2), "float32"), epochs=1, verbose=0)  # moves the statistics
    path = tmp_path / "model.keras"
    with_stock_layers(model).save(path)

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    classes = [layer["class_name"] for layer in config["config"]["layers"]]
    assert "BatchNormalization" in classes and "FusedBatchNormalization" not in classes
    np.save(tmp_path / "images.npy", images)
    # A fresh interpreter that never imports Trainyard, as a user's would.
    script = (
        "import sys, numpy as np, keras; "
        "m = keras.saving.load_model(sys.argv[1]); "
        "print(m.predict(np.load(sys.argv[2]), verbose=0).tolist())"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    predictions = json.loads(loaded.stdout.strip().splitlines()[-1])
    # float32 in two processes whose kernels may sum in another order: an output near zero
    # (0.005) differed by 6e-8 once, over 1e-5 of itself, hence the absolute bound too.
    np.testing.assert_allclose(predictions, model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
