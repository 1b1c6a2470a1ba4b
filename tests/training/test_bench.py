"""The throughput benchmark still runs against the current engine (its figures are
measured by hand: see BENCHMARKS.md; this only keeps the script from rotting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.training
def test_engine_side_of_the_benchmark_runs() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "train_throughput.py"),
            "--engine-only",
            "--images",
            "64",
            "--steps",
            "2",
            "--batch-size",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["recipe"] == "engine" and figures["images_per_s"] > 0
