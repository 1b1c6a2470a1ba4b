"""The model zoo: each model builds under MirroredStrategy over 2 logical CPU devices (two
real replicas) and trains a step; its parameter count is the one GET /models and the
README give. The optimizer, weight decay, label smoothing and pad-and-crop options train."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from app.core.spec import ModelName
from app.core.zoo import ZOO
from tests.conftest import BLOCK_TRAINYARD

from .conftest import FAST, small_npz, trainer_env

pytestmark = pytest.mark.training

# Run in a fresh interpreter: the CPU can be split into logical devices only before
# TensorFlow's runtime starts.
BUILD_AND_STEP = """
import json, sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from worker.training.models import MODELS, build_model
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
y = rng.integers(0, 10, size=8)
for name in MODELS:
    with strategy.scope():
        model = build_model(name, (32, 32, 3), 10)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    moved = any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    print(json.dumps({"model": name, "params": model.count_params(),
                      "replicas": strategy.num_replicas_in_sync, "moved": moved,
                      "loss": history.history["loss"][0]}))
"""


def test_every_zoo_model_trains_a_step_on_two_replicas_with_its_listed_parameters(
    tmp_path: Path,
) -> None:
    assert typing.get_args(ModelName) == tuple(ZOO)  # the spec takes exactly the zoo
    done = subprocess.run(
        [sys.executable, "-c", BUILD_AND_STEP],
        env=trainer_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    built = {row["model"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert list(built) == list(ZOO)
    for name, row in built.items():
        assert row["params"] == ZOO[name].params, name
        assert row["replicas"] == 2 and row["moved"] and np.isfinite(row["loss"]), row


def test_pad_and_crop_takes_each_image_from_its_own_offset() -> None:
    import tensorflow as tf

    from worker.training.pipeline import pad_and_crop

    images = tf.reshape(tf.range(64 * 8 * 8, dtype=tf.float32) + 1, (64, 8, 8, 1))
    cropped = pad_and_crop(images, 2, seed=3).numpy()
    assert cropped.shape == (64, 8, 8, 1)
    offsets = set()
    for original, out in zip(images.numpy(), cropped, strict=True):
        padded = np.pad(original, ((2, 2), (2, 2), (0, 0)))
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(padded[dy : dy + 8, dx : dx + 8], out)
        ]
        assert found, "not a crop of the padded image"
        offsets.add(found[0])
    assert len(offsets) > 10  # offsets differ from image to image, all 25 possible


def test_resnet20_with_adamw_label_smoothing_and_pad_crop_trains(trainer, tmp_path: Path) -> None:
    run = trainer(
        *FAST,
        "--model", "resnet20", "--optimizer", "adamw", "--label-smoothing", "0.1",
        "--augment", "pad_crop", "--dataset", small_npz(tmp_path / "small.npz"), "--epochs", "2",
        "--batch-size", "32", "--lr", "0.001", "--workdir", "run",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    started = run.one("started")
    assert (started["params"], started["optimizer"]) == (ZOO["resnet20"].params, "adamw")
    assert started["weight_decay"] == 0.004  # AdamW's own default when none is given
    epochs = run.of("epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(np.isfinite(e["loss"]) and np.isfinite(e["val_accuracy"]) for e in epochs)


def test_the_saved_model_predicts_as_the_trainer_did_without_trainyard(
    trainer, tmp_path: Path
) -> None:
    from worker.training.data import load_dataset

    dataset = small_npz(tmp_path / "small.npz")
    run = trainer(
        *FAST, "--model", "resnet20", "--dataset", dataset, "--epochs", "1",
        "--lr", "0.05", "--seed", "2", "--workdir", "run",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    finished = run.one("finished")
    np.save(tmp_path / "images.npy", load_dataset(dataset).x_test[:10])
    # A fresh interpreter that cannot import Trainyard, as a user's would: plain Keras, the
    # model file and the mean image the job also serves.
    script = (
        f"{BLOCK_TRAINYARD}import sys, numpy as np, keras; "
        "m = keras.saving.load_model(sys.argv[1]); "
        "x = np.load(sys.argv[2]).astype('float32') - np.load(sys.argv[3]); "
        "print(np.argmax(m.predict(x, verbose=0), axis=-1).tolist())"
    )
    env = {k: v for k, v in trainer_env(tmp_path).items() if k != "PYTHONPATH"}
    loaded = subprocess.run(
        [sys.executable, "-c", script, finished["model_path"], str(tmp_path / "images.npy"),
         str(tmp_path / "run" / "mean_image.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == finished["test_predictions"]
    assert len(finished["test_predictions"]) == 10


def test_an_uploaded_architecture_starts_from_its_weights_only_when_asked(
    tmp_path: Path,
) -> None:
    import keras

    from tests.keras_files import make_model_files
    from worker.training.uploaded import load_uploaded

    make_model_files(tmp_path)
    saved = keras.saving.load_model(tmp_path / "cnn.keras").get_weights()

    def same(model: keras.Model) -> bool:
        return all(np.array_equal(a, b) for a, b in zip(saved, model.get_weights(), strict=True))

    assert same(load_uploaded(tmp_path / "cnn.keras", "uploaded").model)
    assert not same(load_uploaded(tmp_path / "cnn.keras", "random").model)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:  # the job's precision policy applies, and the softmax stays float32
        mixed = load_uploaded(tmp_path / "cnn.keras").model
        assert mixed.layers[1].compute_dtype == "bfloat16"
        assert mixed.layers[-1].compute_dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
