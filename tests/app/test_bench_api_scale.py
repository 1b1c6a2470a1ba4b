"""bench/api_scale.py still runs end to end on a small SQLite database (its figures are
measured by hand: see BENCHMARKS.md; this keeps the script from rotting), with the POST
clients spread over two API processes."""

from __future__ import annotations

from pathlib import Path

from tests.bench_scripts import run_bench


def test_the_api_scale_bench_runs_and_reports_every_figure(tmp_path: Path) -> None:
    report = run_bench(
        "api_scale.py",
        "--backend=sqlite",
        "--sqlite-jobs=200",
        "--epochs-per-job=2",
        "--samples=3",
        "--posts=32",
        "--passes=2",
        "--log-mb=1",
        "--api-processes=2",
        cwd=tmp_path,
    )
    figures = report["results"]["sqlite"]
    assert figures["post"]["status_codes"] == {"201": 32}
    assert figures["post"]["api_processes"] == 2
    # The warm-up pass before the timed ones leaves the database as seeded: the first timed
    # pass is the one that places what fits (the bench host's 4 GPUs).
    assert figures["schedule_pass_ms"]["queued"] == 20
    assert figures["schedule_pass_ms"]["placed"] > 0
    assert figures["schedule_pass_ms"]["quiet_p50"] > 0
    assert figures["log_tail_ms"]["n"] == 3
    judged = {(t["backend"], t["figure"]) for t in report["targets"]}
    assert ("sqlite", "get_job_ms.p99") in judged
