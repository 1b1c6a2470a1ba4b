"""The seed's training chart: loss and accuracy of train and validation per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

# Headless: workers have no display, and the seed's own comment says to use Agg there.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after matplotlib.use: the backend must be chosen first


def plot_history(history: list[dict[str, Any]], dataset_title: str, path: Path) -> None:
    """Save the seed's chart ("MiniGoogLeNet on <dataset>") of `history` to `path`."""
    epochs = [record["epoch"] for record in history]
    plt.style.use("ggplot")
    figure = plt.figure()
    try:
        for key, label in (
            ("loss", "train_loss"),
            ("val_loss", "val_loss"),
            ("accuracy", "train_acc"),
            ("val_accuracy", "val_acc"),
        ):
            values = [record.get(key) for record in history]
            plt.plot(epochs, [float("nan") if v is None else v for v in values], label=label)
        plt.title(f"MiniGoogLeNet on {dataset_title}")
        plt.xlabel("Epoch #")
        plt.ylabel("Loss/Accuracy")
        plt.legend()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)
