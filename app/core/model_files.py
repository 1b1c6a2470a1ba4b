"""Uploaded Keras architectures, read as data: the model's JSON config, from a `.keras` file
(a zip holding config.json, metadata.json and the weights) or from `model.to_json()`.

Nothing here runs Keras. `code_needed` walks the config before Keras ever sees it and names
the first layer that would need Python code to rebuild: a Lambda (pickled bytecode or a
named function), a layer class from outside Keras (a custom or registered object), any
function reference. Only then is the file loaded, in a separate process, with Keras' own
safe mode as well (worker/training/model_check.py).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
MAX_CONFIG_BYTES = 16 * 2**20  # a config is a few hundred kB even for a large network

# Keras' own modules; an object from anywhere else is user code.
KERAS_MODULES = ("keras", "keras.")
# Keras classes that hold or call arbitrary code (or another framework's modules).
CODE_LAYERS = frozenset(
    {"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer", "TFOpLambda"}
)


class ModelFileError(ValueError):
    """The file is not a Keras model this service can take; the message says why."""


def read_config(path: Path) -> tuple[dict[str, Any], str, bool]:
    """(the model's config, "keras" or "json", whether it holds weights) of the file at
    `path`; ModelFileError when it is neither a .keras archive nor a model's JSON."""
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo(CONFIG_MEMBER)
                if info.file_size > MAX_CONFIG_BYTES:
                    raise ModelFileError(f"{CONFIG_MEMBER} is over {MAX_CONFIG_BYTES} bytes")
                raw = archive.read(info)
                has_weights = WEIGHTS_MEMBER in archive.namelist()
        except KeyError as error:
            raise ModelFileError(
                f"a .keras file holds {CONFIG_MEMBER} (what model.save writes); this zip has none"
            ) from error
        except zipfile.BadZipFile as error:
            raise ModelFileError(f"a broken zip archive: {error}") from error
        kind = "keras"
    else:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelFileError(f"a model's JSON is at most {MAX_CONFIG_BYTES} bytes")
        raw, kind, has_weights = path.read_bytes(), "json", False
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(
            "neither a .keras file (model.save) nor a model's JSON (model.to_json()): "
            f"{str(error)[:80]}"
        ) from error
    if not isinstance(config, dict) or config.get("class_name") not in ("Functional", "Sequential"):
        raise ModelFileError(
            "not a Keras model: the config's class_name must be Functional or Sequential "
            "(a model built with keras.Model(inputs, outputs) or keras.Sequential)"
        )
    return config, kind, has_weights


def code_needed(config: Any, layer: str = "the model") -> str | None:
    """Why rebuilding `config` would run code that is not Keras', naming the layer; or None."""
    if isinstance(config, list):
        for item in config:
            if (why := code_needed(item, layer)) is not None:
                return why
        return None
    if not isinstance(config, dict):
        return None
    inner = config.get("config")
    if isinstance(inner, dict) and isinstance(inner.get("name"), str) and "class_name" in config:
        layer = f"layer {inner['name']!r}"
    class_name = config.get("class_name")
    if isinstance(class_name, str) and class_name != "__keras_tensor__":
        module = config.get("module")
        registered = config.get("registered_name")
        if class_name in CODE_LAYERS:
            return f"{layer} is a {class_name}, which runs Python code; use Keras' own layers"
        if class_name in ("function", "__lambda__") or registered == "function":
            return (
                f"{layer} refers to a Python function ({inner!r:.60}); only Keras' own are allowed"
            )
        if module is not None and not (
            isinstance(module, str) and (module == "keras" or module.startswith(KERAS_MODULES[1]))
        ):
            return f"{layer} uses {class_name} from {str(module)[:60]}, which is not Keras"
        if registered not in (None, class_name):
            custom = str(registered)[:60]
            return f"{layer} uses the custom object {custom}; only Keras' own are allowed"
    for key, value in config.items():
        if key == "function" and isinstance(value, str):  # an old-style Lambda's code
            return f"{layer} holds Python code; use Keras' own layers"
        if (why := code_needed(value, layer)) is not None:
            return why
    return None
