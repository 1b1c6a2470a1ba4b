"""The trainer's two voices: JSON-line events for a supervisor, or progress lines for a person.

JSON protocol (one compact object per line, flushed at once, on the real stdout only):
started, epoch (also replayed ones on resume), checkpoint, finished, failed. Everything else,
including whatever TensorFlow or C++ libraries print, goes to stderr (see __main__).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Protocol


class Reporter(Protocol):
    def event(self, kind: str, **fields: Any) -> None: ...

    def info(self, message: str) -> None: ...


def _finite(value: Any) -> Any:
    # JSON has no NaN/Infinity; a supervisor's strict parser would reject the whole line.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonReporter:
    """Writes events to `event_fd` (the saved real stdout) and notes to stderr."""

    def __init__(self, event_fd: int) -> None:
        self.event_fd = event_fd

    def event(self, kind: str, **fields: Any) -> None:
        record = {"event": kind, **{key: _finite(value) for key, value in fields.items()}}
        data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        # os.write may write less than asked on a pipe; a torn line would break the protocol.
        while data:
            written = os.write(self.event_fd, data)
            data = data[written:]

    def info(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


class HumanReporter:
    """Seed-style progress on stdout: "Epoch 3/70 - 63s - loss: ... - val_accuracy: ..."."""

    def __init__(self) -> None:
        self.epochs = 0

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "started":
            self.epochs = fields["epochs"]
            devices = ", ".join(fields["devices"])
            self.info(
                f"[INFO] training {fields['params']:,} parameters on {fields['replicas']} "
                f"replica(s) ({devices}), precision {fields['precision']}, "
                f"global batch {fields['global_batch']}, BatchNormalization momentum "
                f"{fields['bn_momentum']:g}, {fields['train_images']} training / "
                f"{fields['test_images']} test images"
            )
            if fields["initial_epoch"]:
                self.info(f"[INFO] resuming after epoch {fields['initial_epoch']}")
        elif kind == "epoch":
            self.info(self._epoch_line(fields))
        elif kind == "finished":
            self.info(f"[INFO] model saved to {fields['model_path']}")
            if fields.get("plot_path"):
                self.info(f"[INFO] plot saved to {fields['plot_path']}")
        elif kind == "failed":
            print(f"error: {fields['message']}", file=sys.stderr, flush=True)

    def _epoch_line(self, fields: dict[str, Any]) -> str:
        header = f"Epoch {fields['epoch']}/{self.epochs}"
        if fields.get("replayed"):
            return f"{header} (from checkpoint) - " + _metrics(fields)
        return f"{header} - {fields['seconds']:.0f}s - " + _metrics(fields)

    def info(self, message: str) -> None:
        print(message, flush=True)


def _metrics(fields: dict[str, Any]) -> str:
    parts = []
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        value = fields.get(key)
        parts.append(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: n/a")
    parts.append(f"lr: {fields['lr']:.6g}")
    return " - ".join(parts)
