"""POST /jobs throughput of two checkouts of Trainyard, interleaved, on copies of one database.

`bench/api_scale.py --keep` leaves a seeded database behind (100,000 jobs on PostgreSQL by
default); the submission figure it prints comes from one run, which the noise of a shared
machine moves by 10% or more. This bench times only the submissions, for each checkout in
turn, on a fresh copy of that database each time (so every run starts from the same queue),
and prints the jobs per second of each run and the ratio of each pair:

    python bench/api_scale.py --backend postgresql --keep       # prints the database's name
    git worktree add /tmp/before <commit>
    python bench/post_rate.py --database trainyard_bench_1234abcd \\
        --checkout /tmp/before --checkout . --pairs 4 --api-processes 1

Each run starts `trainyard api` from that checkout (its own code, this Python), with the
submission limits at their defaults and each client switching user every --posts-per-user
submissions, as api_scale.py does. The copies are dropped afterwards; the database given
is left as it was.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from api_scale import (  # bench/, the script's own folder
    api_server,
    fresh_database,
    post_throughput,
    poster_tokens,
)
from sqlalchemy.orm import sessionmaker

from app.core.db import make_engine


def one_run(url: str, checkout: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    users = math.ceil(args.posts / args.clients / args.posts_per_user)
    engine = make_engine(url)
    with sessionmaker(bind=engine)() as session:
        tokens = poster_tokens(session, args.clients, users, "rate")
    engine.dispose()
    data_dir = workdir / "data"
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                api_server(url, data_dir, True, workdir / f"api-{k}.log", repo=checkout)
            )
            for k in range(args.api_processes)
        ]
        return post_throughput(servers, tokens, args.posts, args.posts_per_user)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="the seeded database to copy")
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument(
        "--checkout", type=Path, action="append", required=True, help="A, then B (or just one)"
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--api-processes", type=int, default=1)
    parser.add_argument("--posts-per-user", type=int, default=50)
    args = parser.parse_args()
    checkouts = [path.resolve() for path in args.checkout]
    runs: list[list[dict[str, Any]]] = [[] for _ in checkouts]
    for _ in range(args.pairs):
        for k, checkout in enumerate(checkouts):
            with (
                tempfile.TemporaryDirectory(prefix="trainyard-post-") as workdir,
                fresh_database(
                    "postgresql", args.postgres_url, Path(workdir), False, args.database
                ) as url,
            ):
                result = one_run(url, checkout, args, Path(workdir))
            runs[k].append(result)
            print(json.dumps({"checkout": str(checkout), **result}), file=sys.stderr)
    rates = [[run["jobs_per_s"] for run in found] for found in runs]
    report: dict[str, Any] = {
        "bench": "post_rate",
        "cpus": os.cpu_count(),
        "api_processes": args.api_processes,
        "clients": args.clients,
        "checkouts": [str(path) for path in checkouts],
        "jobs_per_s": rates,  # one list per checkout, in the order given
        "server_cpu_ms": [[run["server_cpu_ms"] for run in found] for found in runs],
    }
    if len(checkouts) == 2:
        ratios = [round(b / a, 3) for a, b in zip(*rates, strict=True)]
        report["ratios_b_over_a"] = ratios
        report["median_ratio"] = round(statistics.median(ratios), 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
