"""The seed's loss/accuracy chart, drawn from the stored epochs (works while a job runs)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the API has no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from app.models import Epoch  # noqa: E402

DATASET_TITLES = {"cifar10": "CIFAR-10", "digits": "digits", "synthetic": "synthetic data"}
MODEL_TITLES = {"minigooglenet": "MiniGoogLeNet"}


def render_history_png(epochs: Sequence[Epoch], model: str, dataset: str) -> bytes:
    """train_loss, val_loss, train_acc and val_acc per epoch, as in the seed's train.py."""
    numbers = [e.epoch for e in epochs]
    with plt.style.context("ggplot"):
        figure = Figure(figsize=(6.4, 4.8))
        axes = figure.subplots()
        axes.plot(numbers, [e.loss for e in epochs], label="train_loss")
        axes.plot(numbers, [e.val_loss for e in epochs], label="val_loss")
        axes.plot(numbers, [e.accuracy for e in epochs], label="train_acc")
        axes.plot(numbers, [e.val_accuracy for e in epochs], label="val_acc")
        title = f"{MODEL_TITLES.get(model, model)} on {DATASET_TITLES.get(dataset, dataset)}"
        axes.set_title(title)
        axes.set_xlabel("Epoch #")
        axes.set_ylabel("Loss/Accuracy")
        if numbers:
            axes.legend()
        else:
            axes.text(0.5, 0.5, "no epoch finished yet", ha="center", transform=axes.transAxes)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    return buffer.getvalue()
