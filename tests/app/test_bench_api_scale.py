"""bench/api_scale.py still runs end to end on a small SQLite database (its figures are
measured by hand: see BENCHMARKS.md; this keeps the script from rotting), with the POST
clients spread over two API processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_api_scale_bench_runs_and_reports_every_figure(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "api_scale.py"),
            "--backend=sqlite",
            "--sqlite-jobs=200",
            "--epochs-per-job=2",
            "--samples=3",
            "--posts=32",
            "--passes=2",
            "--log-mb=1",
            "--api-processes=2",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    figures = report["results"]["sqlite"]
    assert figures["post"]["status_codes"] == {"201": 32}
    assert figures["post"]["api_processes"] == 2
    # The warm-up pass before the timed ones leaves the database as seeded: the first timed
    # pass is the one that places what fits (the bench host's 4 GPUs).
    assert figures["schedule_pass_ms"]["queued"] == 20
    assert figures["schedule_pass_ms"]["placed"] > 0
    assert figures["log_tail_ms"]["n"] == 3
    judged = {(t["backend"], t["figure"]) for t in report["targets"]}
    assert ("sqlite", "get_job_ms.p99") in judged
