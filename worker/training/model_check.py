"""`python -m worker.training.model_check FILE --output softmax|logits --max-params N
--memory-bytes B --cpu-seconds S`: check an uploaded architecture and describe it, as one
JSON line on stdout.

The API runs this in a child process under memory and CPU limits (which the process sets
on itself before it imports TensorFlow) and a wall-time limit (it never imports TensorFlow
itself): {"ok": true, "input_shape": [H, W, C], "classes": K, "params": N,
"has_weights": bool} or {"ok": false, "error": "..."}. Nothing of the file runs: its config
is checked for code before Keras reads it, and Keras reads it in safe mode.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

# Every dataset reaches a model as 32x32 images (app/core/zoo.py), with 1 or 3 channels.
SIDE = 32


def describe(path: Path, output: str, max_params: int) -> dict[str, Any]:
    import tensorflow as tf

    from .config import UserError
    from .uploaded import load_uploaded

    try:
        uploaded = load_uploaded(path)
    except UserError as error:
        return {"ok": False, "error": str(error).removeprefix("model: ")}
    except (MemoryError, tf.errors.ResourceExhaustedError):
        return {
            "ok": False,
            "error": "out of memory building it: its weights do not fit in what the check "
            "may use (TRAINYARD_MODEL_CHECK_MEMORY_BYTES)",
        }
    except Exception as error:  # Keras refusing the config: its reason, shortened
        return {"ok": False, "error": f"Keras cannot build it: {str(error)[:300]}"}
    model = uploaded.model
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return {"ok": False, "error": "the model must take one input and give one output"}
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or any(side not in (None, SIDE) for side in shape[1:3]):
        return {
            "ok": False,
            "error": f"the model takes inputs shaped {list(shape)}; every dataset reaches a "
            f"model as {SIDE}x{SIDE} images (batch, {SIDE}, {SIDE}, channels)",
        }
    channels = shape[3]
    if channels not in (1, 3):
        return {"ok": False, "error": f"the model takes {channels} channels; datasets have 1 or 3"}
    out = tuple(model.outputs[0].shape)
    if len(out) != 2 or out[1] is None or out[1] < 2:
        return {"ok": False, "error": f"the output must be (batch, classes >= 2), not {list(out)}"}
    if output == "softmax" and uploaded.from_logits:
        return {
            "ok": False,
            "error": "the last layer is not a softmax; if the model outputs logits, upload it "
            "with output=logits",
        }
    if output == "logits" and not uploaded.from_logits:
        return {"ok": False, "error": "output=logits, but the last layer is a softmax"}
    params = int(model.count_params())
    if params > max_params:
        return {
            "ok": False,
            "error": f"{params} parameters, over the limit of {max_params} "
            "(TRAINYARD_MAX_MODEL_PARAMS)",
        }
    return {
        "ok": True,
        "input_shape": [SIDE, SIDE, int(channels)],
        "classes": int(out[1]),
        "params": params,
        "has_weights": uploaded.has_weights,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.training.model_check")
    parser.add_argument("file", type=Path)
    parser.add_argument("--output", choices=("softmax", "logits"), default="softmax")
    parser.add_argument("--max-params", type=int, default=100_000_000)
    parser.add_argument("--memory-bytes", type=int, help="address-space limit of this process")
    parser.add_argument("--cpu-seconds", type=int, help="CPU-time limit of this process")
    args = parser.parse_args()
    # Set here, first, before TensorFlow is imported (describe imports it): the API spawns
    # this process from a threaded server, where a preexec_fn is not safe to use.
    if args.memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (args.memory_bytes, args.memory_bytes))
    if args.cpu_seconds:
        resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_seconds, args.cpu_seconds))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = describe(args.file, args.output, args.max_params)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
