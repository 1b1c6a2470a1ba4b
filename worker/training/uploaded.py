"""Uploaded architectures: rebuilt from their config, as data, with Keras' safe mode.

The config is checked for anything that would run code (app/core/model_files.py) before
Keras reads it, and deserialized with safe_mode on. Every layer's dtype policy is dropped so
the job's precision policy applies (the weights stay float32 under mixed precision); a
softmax at the end keeps float32, as the zoo's do.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from app.core.model_files import ModelFileError, code_needed, read_config

from .config import UserError


@dataclass(frozen=True)
class UploadedModel:
    model: keras.Model
    from_logits: bool  # the last layer outputs logits, not probabilities
    has_weights: bool


def load_uploaded(path: Path, init: str = "random") -> UploadedModel:
    """The architecture in `path` (.keras or model JSON) built under the current strategy
    scope and dtype policy; with `init` "uploaded" it starts from the file's weights."""
    try:
        config, _kind, has_weights = read_config(path)
    except ModelFileError as error:
        raise UserError(f"model: {error}") from error
    if (why := code_needed(config)) is not None:
        raise UserError(f"model: {why}")
    softmax = ends_in_softmax(config)
    model = keras.saving.deserialize_keras_object(
        _under_job_policy(config, softmax), safe_mode=True
    )
    if init == "uploaded":
        if not has_weights:
            raise UserError("init: 'uploaded' needs a .keras file with weights; this one has none")
        # The weights only: the file's config is not deserialized a second time.
        model.load_weights(path)
    return UploadedModel(model, not softmax, has_weights)


def output_layer(config: dict[str, Any]) -> dict[str, Any]:
    """The config of the layer whose output is the model's (a functional model names it;
    a Sequential model's is its last)."""
    layers = config.get("config", {}).get("layers") or []
    outputs = config.get("config", {}).get("output_layers")
    if outputs:  # [[layer name, node, tensor], ...] or one [layer name, node, tensor]
        name = (outputs[0] if isinstance(outputs[0], list) else outputs)[0]
        for layer in layers:
            if layer.get("config", {}).get("name") == name:
                return dict(layer)
    return dict(layers[-1]) if layers else {}


def ends_in_softmax(config: dict[str, Any]) -> bool:
    """Whether the model's output layer applies a softmax (Dense/Activation/Softmax)."""
    last = output_layer(config)
    return last.get("class_name") == "Softmax" or (
        last.get("config", {}).get("activation") == "softmax"
    )


def _under_job_policy(config: dict[str, Any], softmax: bool) -> dict[str, Any]:
    rebuilt = copy.deepcopy(config)
    output_name = output_layer(config).get("config", {}).get("name")
    for layer in rebuilt.get("config", {}).get("layers") or []:
        inner = layer.get("config", {})
        if layer.get("class_name") != "InputLayer" and "dtype" in inner:
            # The global policy, the job's precision; the output's softmax stays float32.
            inner["dtype"] = "float32" if softmax and inner.get("name") == output_name else None
    return rebuilt
