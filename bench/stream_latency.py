"""Event streams: how soon a committed epoch reaches a connected client, and what many open
streams cost everyone else, on PostgreSQL and SQLite.

Against the real API (`trainyard api` in a subprocess, as bench/api_scale.py starts it) on a
fresh migrated database: a job is claimed as a worker would, then --epochs epochs are
recorded through the worker's own write (worker.runs.record_epoch), --interval seconds
apart. A client following GET /jobs/{id}/events (NDJSON) notes when each epoch arrives; the
delay is arrival minus the commit's return. Then GET /jobs/{id} is timed with no stream
open and with --streams idle streams open. Prints one JSON line.

    python bench/stream_latency.py
    python bench/stream_latency.py --backend sqlite --epochs 20 --streams 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the api_scale helpers beside it
from api_scale import api_server, fresh_database, summary, timed_gets

from app.core import lifecycle
from app.core.config import Settings
from app.core.db import make_engine
from app.core.migrate import upgrade_database
from app.core.spec import JobSpec
from app.core.users import create_user
from worker import runs
from worker.gpus import discover
from worker.inventory import register_host
from worker.scheduler import schedule

TARGET_P95_S = 1.0
TARGET_RATIO = 2.0


def running_job(database_url: str, data_dir: Path) -> tuple[sessionmaker[Any], int, int, str]:
    """A migrated database with a user and one job claimed on a host: (sessions, job id,
    attempt, the user's token)."""
    settings = Settings(data_dir=data_dir, database_url=database_url, worker_name="bench-host")
    upgrade_database(settings)
    factory = sessionmaker(bind=make_engine(database_url), expire_on_commit=False)
    with factory() as session:
        user, token = create_user(session, "bench", is_admin=True)
        register_host(session, settings, discover(1)[0], "simulated")
        spec = JobSpec(dataset="synthetic", epochs=1000, gpus=1)
        job_id = lifecycle.submit(session, spec, user).id
        schedule(session, settings)
        claim = lifecycle.claim(session, job_id, "bench-host")
        assert claim is not None
    return factory, job_id, claim.attempt, token


def epoch_delays(
    base: str, token: str, factory: sessionmaker[Any], job_id: int, attempt: int, args: Any
) -> list[float]:
    committed: dict[int, float] = {}
    arrived: dict[int, float] = {}
    ready = threading.Event()

    def follow() -> None:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/x-ndjson"}
        with httpx.stream(
            "GET", f"{base}/jobs/{job_id}/events", headers=headers, timeout=60
        ) as response:
            for line in response.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if event["event"] == "status":
                    ready.set()  # the backlog came: the stream is live
                if event["event"] == "epoch":
                    arrived[event["data"]["epoch"]] = time.perf_counter()
                    if len(arrived) == args.epochs:
                        return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    ready.wait(30)
    with factory() as session:
        for epoch in range(1, args.epochs + 1):
            time.sleep(args.interval)
            runs.record_epoch(session, job_id, attempt, {"epoch": epoch, "loss": 1.0})
            committed[epoch] = time.perf_counter()
    reader.join(30)
    return [arrived[e] - committed[e] for e in committed if e in arrived]


async def hold_streams(base: str, token: str, job_id: int, count: int, stop: asyncio.Event) -> int:
    """`count` idle streams open until `stop`; returns how many were open."""
    opened = 0
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/x-ndjson"}
    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=60
    ) as client:

        async def one() -> None:
            nonlocal opened
            async with client.stream("GET", f"/jobs/{job_id}/events") as response:
                opened += 1
                async for _ in response.aiter_lines():
                    if stop.is_set():
                        return

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return opened


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="trainyard-streambench-") as folder:
        workdir = Path(folder)
        with fresh_database(backend, args.postgres_url, workdir, keep=False) as url:
            factory, job_id, attempt, token = running_job(url, workdir)
            with api_server(url, workdir, limits=False, log=workdir / "api.log") as server:
                delays = epoch_delays(server.base, token, factory, job_id, attempt, args)
                headers = {"Authorization": f"Bearer {token}"}
                with httpx.Client(base_url=server.base, headers=headers, timeout=30) as client:
                    paths = [f"/jobs/{job_id}"] * args.samples
                    alone = timed_gets(client, server, paths)
                    loop = asyncio.new_event_loop()
                    stop = asyncio.Event()
                    holder = threading.Thread(
                        target=lambda: holder_result.append(
                            loop.run_until_complete(
                                hold_streams(server.base, token, job_id, args.streams, stop)
                            )
                        )
                    )
                    holder_result: list[int] = []
                    holder.start()
                    time.sleep(args.settle)  # let the streams open and go idle
                    crowded = timed_gets(client, server, paths)
                    loop.call_soon_threadsafe(stop.set)
                    holder.join(60)
    delay = summary([d * 1000 for d in delays])
    ratio = crowded["p50"] / alone["p50"] if alone["p50"] else float("inf")
    return {
        "epoch_delay_ms": delay,
        "get_job_ms_no_streams": alone,
        f"get_job_ms_{args.streams}_streams": crowded,
        "streams_open": holder_result[0] if holder_result else 0,
        "p50_ratio": round(ratio, 2),
        "targets": {"delay_p95_ms": TARGET_P95_S * 1000, "p50_ratio": TARGET_RATIO},
        "met": delay["p95"] <= TARGET_P95_S * 1000 and ratio <= TARGET_RATIO,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    backends = ["postgresql", "sqlite"] if args.backend == "both" else [args.backend]
    results = {backend: run_backend(backend, args) for backend in backends}
    machine = platform.processor() or platform.machine()
    print(json.dumps({"bench": "stream_latency", "machine": machine, **results}))


if __name__ == "__main__":
    main()
