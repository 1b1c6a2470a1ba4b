"""bench/post_rate.py still runs end to end (its figures are measured by hand: see
BENCHMARKS.md): two tiny interleaved runs of this checkout, on copies of a migrated
PostgreSQL database that it leaves as it was."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, func, select

from app.core.models import Job
from tests.bench_scripts import run_bench
from tests.conftest import POSTGRES_ADMIN_URL

REPO = Path(__file__).resolve().parents[2]


def test_the_post_rate_bench_runs_two_checkouts_interleaved(
    migrated_postgres_url: str, tmp_path: Path
) -> None:
    template = migrated_postgres_url.rsplit("/", 1)[1]
    report = run_bench(
        "post_rate.py",
        f"--database={template}",
        f"--postgres-url={POSTGRES_ADMIN_URL}",
        f"--checkout={REPO}",
        f"--checkout={REPO}",
        "--pairs=1",
        "--posts=16",
        "--clients=2",
        "--posts-per-user=8",
        cwd=tmp_path,
    )
    assert report["checkouts"] == [str(REPO), str(REPO)]
    assert [len(rates) for rates in report["jobs_per_s"]] == [1, 1]
    assert all(rate > 0 for rates in report["jobs_per_s"] for rate in rates)
    assert len(report["ratios_b_over_a"]) == 1
    engine = create_engine(migrated_postgres_url)
    with engine.connect() as connection:  # the submissions went to the copies
        assert connection.scalar(select(func.count()).select_from(Job)) == 0
    engine.dispose()
