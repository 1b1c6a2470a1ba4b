"""Keras model files a lab might upload, saved by plain Keras in a child process (the test
process stays free of TensorFlow): a good functional CNN (.keras and JSON), one ending in
logits, one taking 28x28 inputs, one with a planted Lambda that creates a file when it
runs, one naming a Python function, one using a custom registered layer, one with a Keras
operation in its graph that would write a file, one compiled with Keras functions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, os, sys
from pathlib import Path
import keras

out = Path(sys.argv[1])
marker = Path(sys.argv[2])

def cnn(side=32, channels=3, softmax=True):
    inputs = keras.Input((side, side, channels))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, outputs, name="lab_cnn")

cnn().save(out / "cnn.keras")
(out / "cnn.json").write_text(cnn().to_json())
cnn(softmax=False).save(out / "logits.keras")
cnn(side=28).save(out / "small.keras")

# Runs (creating the marker) whenever Keras calls the layer: when the model is built here,
# and again if anything ever rebuilds it from the file.
def plant(t, path=str(marker)):
    open(path, "w").close()
    return t

inputs = keras.Input((32, 32, 3))
x = keras.layers.Lambda(lambda t: plant(t), name="planted")(inputs)
x = keras.layers.GlobalAveragePooling2D()(x)
keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(out / "lambda.keras")
named = keras.Sequential(
    [keras.Input((32, 32, 3)), keras.layers.Lambda(os.system, name="shell"),
     keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
)
(out / "function.json").write_text(named.to_json())

@keras.saving.register_keras_serializable(package="lab")
class Doubler(keras.layers.Layer):
    def call(self, t):
        return t * 2

inputs = keras.Input((32, 32, 3))
x = keras.layers.GlobalAveragePooling2D()(Doubler(name="doubler")(inputs))
keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(out / "custom.keras")
# A Keras operation placed in the graph, whose arguments name a Keras function to call
# when the model is rebuilt: here one that writes an image file (switch-ran.png).
config = json.loads(cnn().to_json())
gallery = {"module": "keras.visualization", "class_name": "plot_image_gallery",
           "config": {}, "registered_name": None}
image = {"class_name": "__numpy__", "config": {"value": [[[[0, 0, 0]]]], "dtype": "uint8"}}
config["config"]["layers"].insert(1, {
    "module": "keras.src.ops.core", "class_name": "Switch", "config": {"name": "switch"},
    "registered_name": None, "name": "switch",
    "inbound_nodes": [{"args": [0, [gallery], image, None, None, None, 1, 1, [0, 255], 2,
                                str(out / "switch-ran")], "kwargs": {}}],
})
(out / "operation.json").write_text(json.dumps(config))

# Compiled with Keras' functions as loss and metric (the file's compile settings are not
# the job's: dropped, not refused).
compiled = cnn()
compiled.compile(optimizer="adam", loss=keras.losses.sparse_categorical_crossentropy,
                 metrics=[keras.metrics.sparse_categorical_accuracy])
compiled.save(out / "compiled.keras")
marker.unlink()  # made while building the Lambda model above
print(json.dumps({"cnn_params": cnn().count_params()}))
"""


def make_model_files(folder: Path) -> tuple[Path, dict[str, int]]:
    """Writes the files into `folder`; returns the marker path the planted Lambda would
    create and {"cnn_params": N}."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "lambda-ran"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder), str(marker)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return marker, json.loads(done.stdout.strip().splitlines()[-1])
