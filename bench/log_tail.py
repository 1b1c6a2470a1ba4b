"""The log of a long job: GET /jobs/{id}/logs?tail=100 when the job has a million log lines
in the database (job_log_lines, where workers ship them), on PostgreSQL and SQLite.

Seeds a fresh database (built by the project's migrations) with one job and --lines lines
plus --other-jobs jobs' worth of other lines around them, then times the tail through the
real API (`trainyard api` in a subprocess, as bench/api_scale.py starts it). Prints one JSON
line with p50/p95/p99 in milliseconds and whether the p99 is under the target.

    python bench/log_tail.py                           # 1,000,000 lines, both backends
    python bench/log_tail.py --backend sqlite --lines 100000
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, update
from sqlalchemy.orm import sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the api_scale helpers beside it
from api_scale import api_server, fresh_database, timed_gets

from app.core.config import Settings
from app.core.db import make_engine
from app.core.migrate import upgrade_database
from app.core.models import Job, LogLine
from app.core.spec import JobSpec
from app.core.users import create_user

TARGET_P99_MS = 100.0
BATCH = 50_000


def seed(database_url: str, data_dir: Path, lines: int, other_jobs: int) -> tuple[int, str]:
    """One job with `lines` log lines, interleaved with other jobs' lines as a busy box
    writes them; returns (job id, an admin token)."""
    upgrade_database(Settings(data_dir=data_dir, database_url=database_url))
    engine = make_engine(database_url)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    with factory() as session:
        user, token = create_user(session, "bench", is_admin=True)
        spec = JobSpec(dataset="synthetic", epochs=100, gpus=0).model_dump()
        ids = []
        for _ in range(other_jobs + 1):
            job = Job(owner_id=user.id, status="running", spec=spec, attempt=1, gpus=0)
            session.add(job)
            session.flush()
            ids.append(job.id)
        session.commit()
        target = ids[0]
        text = "epoch 12/100 - 391/391 - loss: 0.8123 - accuracy: 0.7109 - 42ms/step"
        written = 0
        while written < lines:
            rows = []
            for offset in range(min(BATCH, lines - written)):
                number = written + offset
                rows.append({"job_id": target, "attempt": 1, "line": f"{number} {text}"})
                if other_jobs and number % 4 == 0:  # other jobs log too, in between
                    other = ids[1 + number % other_jobs]
                    rows.append({"job_id": other, "attempt": 1, "line": text})
            session.execute(insert(LogLine), rows)
            session.commit()
            written += min(BATCH, lines - written)
        session.execute(update(Job).where(Job.id == target).values(log_lines=lines))
        session.commit()
    engine.dispose()
    return target, token


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="trainyard-logbench-") as folder:
        workdir = Path(folder)
        with fresh_database(backend, args.postgres_url, workdir, keep=False) as url:
            job_id, token = seed(url, workdir, args.lines, args.other_jobs)
            with (
                api_server(url, workdir, limits=False, log=workdir / "api.log") as server,
                httpx.Client(
                    base_url=server.base, headers={"Authorization": f"Bearer {token}"}
                ) as client,
            ):
                tail = client.get(f"/jobs/{job_id}/logs", params={"tail": 100}).text
                last = tail.splitlines()[-1].split()[0]
                assert last == str(args.lines - 1), f"wrong tail: ends with line {last}"
                paths = [f"/jobs/{job_id}/logs?tail=100"] * args.samples
                figures = timed_gets(client, server, paths)
    return {
        "lines": args.lines,
        "tail_100_ms": figures,
        "target_p99_ms": TARGET_P99_MS,
        "met": figures["p99"] <= TARGET_P99_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--other-jobs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    backends = ["postgresql", "sqlite"] if args.backend == "both" else [args.backend]
    results = {backend: run_backend(backend, args) for backend in backends}
    print(
        json.dumps(
            {"bench": "log_tail", "machine": platform.processor() or platform.machine(), **results}
        )
    )


if __name__ == "__main__":
    main()
