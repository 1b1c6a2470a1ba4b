"""The seed's loss/accuracy chart: the one drawing used by the API (from the stored epochs,
while a job runs too) and by the standalone trainer (`--output plot.png`)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: neither the API nor a worker has a display

from matplotlib.figure import Figure
from matplotlib.style import context as style_context
from matplotlib.ticker import MaxNLocator

DATASET_TITLES = {"cifar10": "CIFAR-10", "digits": "digits", "synthetic": "synthetic data"}
MODEL_TITLES = {"minigooglenet": "MiniGoogLeNet"}
# (record key, legend label), in the seed's order.
SERIES = (
    ("loss", "train_loss"),
    ("val_loss", "val_loss"),
    ("accuracy", "train_acc"),
    ("val_accuracy", "val_acc"),
)


def chart_title(model: str, dataset: str) -> str:
    """ "MiniGoogLeNet on CIFAR-10", as the seed titles it; unknown names are shown as given."""
    return f"{MODEL_TITLES.get(model, model)} on {DATASET_TITLES.get(dataset, dataset)}"


def history_png(epochs: Sequence[Mapping[str, Any] | Any], title: str) -> bytes:
    """train_loss, val_loss, train_acc and val_acc per epoch, as PNG. Each record is a mapping
    or an object with the attributes `epoch`, `loss`, `val_loss`, `accuracy`, `val_accuracy`."""

    def value(record: Mapping[str, Any] | Any, key: str) -> Any:
        return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)

    numbers = [value(record, "epoch") for record in epochs]
    with style_context("ggplot"):
        figure = Figure(figsize=(6.4, 4.8))
        axes = figure.subplots()
        for key, label in SERIES:
            # A metric the trainer did not report is a gap in the line, not a crash.
            values = [value(record, key) for record in epochs]
            axes.plot(numbers, [float("nan") if v is None else v for v in values], label=label)
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


METRIC_LABELS = {
    "loss": "train loss",
    "accuracy": "train accuracy",
    "val_loss": "validation loss",
    "val_accuracy": "validation accuracy",
    "lr": "learning rate",
    "seconds": "seconds per epoch",
}


def compare_png(runs: Sequence[tuple[str, Sequence[Any]]], metric: str) -> bytes:
    """One line per run (legend label, its epoch records): `metric` per epoch, as PNG."""
    with style_context("ggplot"):
        figure = Figure(figsize=(6.4, 4.8))
        axes = figure.subplots()
        for label, records in runs:
            numbers = [record.epoch for record in records]
            values = [getattr(record, metric) for record in records]
            axes.plot(numbers, [float("nan") if v is None else v for v in values], label=label)
        axes.set_title(f"{METRIC_LABELS[metric]} per epoch")
        axes.set_xlabel("Epoch #")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(METRIC_LABELS[metric])
        axes.legend()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    return buffer.getvalue()
