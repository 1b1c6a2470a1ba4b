"""The throughput benchmark still runs against the current engine (its figures are
measured by hand: see BENCHMARKS.md; this only keeps the script from rotting)."""

from __future__ import annotations

import pytest

from tests.bench_scripts import run_bench


@pytest.mark.training
def test_engine_side_of_the_benchmark_runs() -> None:
    figures = run_bench(
        "train_throughput.py", "--engine-only", "--images=64", "--steps=2", "--batch-size=16"
    )
    assert figures["recipe"] == "engine" and figures["images_per_s"] > 0
