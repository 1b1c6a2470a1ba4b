"""Uploaded Keras architectures, read as data: the model's JSON config, from a `.keras` file
(a zip holding config.json, metadata.json and the weights) or from `model.to_json()`.

Nothing here runs Keras. `code_needed` walks the config before Keras ever sees it and names
the first layer that is not made of Keras' own layers, initialisers, regularisers and
constraints (an allowlist): a Lambda (pickled bytecode or a named function), a class from
outside Keras, a custom or registered object, a function reference, a Keras operation.
Only then is the file loaded, in a separate process, with Keras' own safe mode as well
(worker/training/model_check.py). The file's compile settings are dropped: the job's
optimizer and loss apply.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
MAX_CONFIG_BYTES = 16 * 2**20  # a config is a few hundred kB even for a large network

# What a model built from Keras' own layers holds, and nothing else: (module, class names;
# None: any class of that module whose name is capitalised, i.e. a class, not a function).
# Everything else is refused, Keras-internal objects included: an operation such as
# keras.src.ops.core.Switch, placed in a functional model, calls whatever function its
# arguments name when the model is rebuilt.
ALLOWED: dict[str, frozenset[str] | None] = {
    "keras": frozenset({"DTypePolicy", "FloatDTypePolicy", "Sequential", "Functional", "Model"}),
    "keras.models": frozenset({"Sequential", "Functional", "Model"}),
    "keras.src.models.functional": frozenset({"Functional"}),
    "keras.src.models.sequential": frozenset({"Sequential"}),
    "keras.layers": None,
    "keras.initializers": None,
    "keras.regularizers": None,
    "keras.constraints": None,
}
# keras.layers members that hold or call code (or are not layers).
CODE_LAYERS = frozenset(
    {"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer", "Input", "InputSpec"}
)
TENSOR_REFERENCE = "__keras_tensor__"  # a layer's input in a functional model's graph


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
    # How it was compiled (optimizer, loss, metrics) is the job's to say, not the file's.
    config.pop("compile_config", None)
    return config, kind, has_weights


def code_needed(config: Any, layer: str = "the model") -> str | None:
    """Why rebuilding `config` would run code that is not one of Keras' own layers, naming
    the layer; or None. Every object in it must be on the ALLOWED list."""
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
    if "class_name" in config and (why := _not_allowed(config, layer)) is not None:
        return why
    for value in config.values():
        if (why := code_needed(value, layer)) is not None:
            return why
    return None


def _not_allowed(item: dict[str, Any], layer: str) -> str | None:
    class_name, module = item.get("class_name"), item.get("module")
    name = str(class_name)[:60]
    if class_name == TENSOR_REFERENCE and module is None:
        return None
    if class_name in CODE_LAYERS:
        return f"{layer} is a {name}, which runs Python code; use Keras' own layers"
    if class_name in ("function", "__lambda__") or item.get("registered_name") == "function":
        return f"{layer} refers to a Python function; only Keras' own layers are allowed"
    if item.get("registered_name") not in (None, class_name):
        custom = str(item.get("registered_name"))[:60]
        return f"{layer} uses the custom object {custom}; only Keras' own are allowed"
    if not isinstance(module, str) or module not in ALLOWED:
        where = "no module" if module is None else str(module)[:60]
        return f"{layer} uses {name} from {where}, which is not one of Keras' layers"
    allowed = ALLOWED[module]
    is_class = isinstance(class_name, str) and class_name[:1].isupper()
    if not is_class or (allowed is not None and class_name not in allowed):
        return f"{layer} uses {name} from {module}, which is not one of Keras' layers"
    return None
