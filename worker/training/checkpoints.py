"""Per-epoch checkpoints: model weights, optimizer state and the history, in one .npz file.

One file per epoch (`epoch-0007.npz`), written to a temporary name, fsynced and renamed, so a
SIGKILL at any moment leaves either the previous checkpoint or the new one, never half of one.
Only the newest KEEP files are kept. Plain numpy arrays (not tf.train.Checkpoint) keep the
format independent of variable names and distribution strategy, and readable without TF.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KEEP = 2
_NAME = re.compile(r"^epoch-(\d{4,})\.npz$")


@dataclass
class Checkpoint:
    epoch: int  # epochs completed (1-based number of the last one)
    path: Path
    model_weights: list[np.ndarray]
    optimizer_variables: list[np.ndarray]
    state: dict[str, Any]  # "history": list of epoch records, "signature": what was trained

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.state.get("history", []))


class CheckpointStore:
    def __init__(self, folder: Path, keep: int = KEEP) -> None:
        self.folder = folder
        self.keep = keep

    def path_for(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch:04d}.npz"

    def saved_epochs(self) -> list[int]:
        """Epoch numbers of the checkpoint files present, oldest first."""
        if not self.folder.is_dir():
            return []
        epochs = []
        for entry in self.folder.iterdir():
            match = _NAME.match(entry.name)
            if match:
                epochs.append(int(match.group(1)))
        return sorted(epochs)

    def save(
        self,
        epoch: int,
        model_weights: list[np.ndarray],
        optimizer_variables: list[np.ndarray],
        state: dict[str, Any],
    ) -> Path:
        """Write the checkpoint for `epoch` atomically, then prune all but the newest `keep`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path_for(epoch)
        temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        arrays: dict[str, np.ndarray] = {"state": np.array(json.dumps(state))}
        arrays.update({f"model_{i:04d}": w for i, w in enumerate(model_weights)})
        arrays.update({f"optimizer_{i:04d}": v for i, v in enumerate(optimizer_variables)})
        try:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)  # a full disk must not also keep half a file
            raise
        self._fsync_folder()
        self.prune()
        return final

    def prune(self) -> None:
        for epoch in self.saved_epochs()[: -self.keep]:
            self.path_for(epoch).unlink(missing_ok=True)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that loads; an unreadable newest one falls back to the older."""
        for epoch in reversed(self.saved_epochs()):
            try:
                return self.load(epoch)
            except (OSError, ValueError, KeyError, EOFError):
                continue
        return None

    def load(self, epoch: int) -> Checkpoint:
        path = self.path_for(epoch)
        with np.load(path, allow_pickle=False) as archive:
            state = json.loads(str(archive["state"]))
            model = sorted(k for k in archive.files if k.startswith("model_"))
            optimizer = sorted(k for k in archive.files if k.startswith("optimizer_"))
            return Checkpoint(
                epoch=epoch,
                path=path,
                model_weights=[archive[k] for k in model],
                optimizer_variables=[archive[k] for k in optimizer],
                state=state,
            )

    def _fsync_folder(self) -> None:
        # Makes the rename itself durable across a power loss, not only the file contents.
        try:
            descriptor = os.open(self.folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(descriptor)
        except OSError:
            pass
        finally:
            os.close(descriptor)
