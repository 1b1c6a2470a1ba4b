"""The seed's loss/accuracy chart, drawn from the stored epochs (works while a job runs)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the API has no display

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from app.core.models import Epoch

DATASET_TITLES = {"cifar10": "CIFAR-10", "digits": "digits", "synthetic": "synthetic data"}
MODEL_TITLES = {"minigooglenet": "MiniGoogLeNet"}


def render_history_png(epochs: Sequence[Epoch], model: str, dataset: str) -> bytes:
    """train_loss, val_loss, train_acc and val_acc per epoch, as in the seed's train.py."""
    numbers = [e.epoch for e in epochs]

    def series(name: str) -> list[float]:
        # A metric the trainer did not report is a gap in the line, not a crash.
        return [float("nan") if getattr(e, name) is None else getattr(e, name) for e in epochs]

    with plt.style.context("ggplot"):
        figure = Figure(figsize=(6.4, 4.8))
        axes = figure.subplots()
        axes.plot(numbers, series("loss"), label="train_loss")
        axes.plot(numbers, series("val_loss"), label="val_loss")
        axes.plot(numbers, series("accuracy"), label="train_acc")
        axes.plot(numbers, series("val_accuracy"), label="val_acc")
        title = f"{MODEL_TITLES.get(model, model)} on {DATASET_TITLES.get(dataset, dataset)}"
        axes.set_title(title)
        axes.set_xlabel("Epoch #")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel("Loss/Accuracy")
        if numbers:
            axes.legend()
        else:
            axes.text(0.5, 0.5, "no epoch finished yet", ha="center", transform=axes.transAxes)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    return buffer.getvalue()
