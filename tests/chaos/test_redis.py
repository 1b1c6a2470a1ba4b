"""The broker loses everything, twice: a Redis server of the test's own crashes and comes
back empty while jobs are queued, placed and running, then is flushed (FLUSHALL) under them.
The API and a worker run on PostgreSQL and that Redis. The database is the system of
record: every job finishes, each epoch once."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.chaos.harness import (
    chaos_env,
    check_invariants,
    database,
    private_redis,
    service,
    wait_until,
)
from tests.e2e.service import add_user, api_client, free_port, wait_for_hosts, wait_healthy

pytestmark = pytest.mark.chaos

EPOCHS = 3


def test_a_broker_crash_and_a_flush_lose_no_job(tmp_path: Path, postgres_url: str) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    host = f"chaos-{uuid.uuid4().hex[:6]}"
    steps = ["started", "resume:0.7", "finished"]
    api_dir, worker_dir = tmp_path / "api-data", tmp_path / "worker-data"
    with (
        private_redis(tmp_path / "redis") as broker,
        service(tmp_path / "logs", [worker_dir]) as running,
        database(postgres_url) as db,
    ):
        shared = {"database_url": postgres_url, "broker_url": broker.url}
        api_env = chaos_env(api_dir, steps, **shared)
        # 3 GPUs but 2 Celery threads: two jobs run, a third is placed and its message waits
        # in Redis (prefetch 1 per thread) until a thread is free, the rest are queued.
        worker_env = chaos_env(
            worker_dir,
            steps,
            **shared,
            worker_name=host,
            simulated_gpus="3",
            cpu_job_slots="0",
            worker_concurrency="2",
        )
        token = add_user(api_env, "operator", admin=True)  # migrates the empty database
        running.start("api", ["api", "--port", str(port)], api_env)
        running.start("worker", ["worker"], worker_env)
        wait_healthy(base_url)
        with api_client(base_url, token) as client:
            wait_for_hosts(client, {host})
            spec = {"dataset": "synthetic", "epochs": EPOCHS, "gpus": 1}
            ids = [client.post("/jobs", json=spec).json()["id"] for _ in range(8)]

            def counts() -> dict[str, int]:
                statuses = list(db.statuses().values())
                return {s: statuses.count(s) for s in ("queued", "placed", "running")}

            def mixed() -> bool:
                now = counts()
                return now["running"] == 2 and now["placed"] == 1 and now["queued"] == 5

            queue = f"trainyard.{host}"  # the host's Celery queue: a Redis list
            wait_until(
                lambda: mixed() and broker.waiting(queue),
                30,
                lambda: f"2 running, 1 placed (its message in {queue}), 5 queued: {db.statuses()}",
            )

            # 1. Redis crashes and restarts empty: the placed job's message, the running
            # jobs' unacknowledged ones, the worker's connection: all gone.
            epochs_before = sum(len(db.epochs(i)) for i in ids)
            broker.crash()
            # While it is down, the runs go on (they need only the database), and the GPU
            # a finished run frees is placed again though no message can be sent.
            wait_until(
                lambda: counts()["placed"] >= 2,
                30,
                lambda: f"a placement with the broker down: {db.statuses()}\n{running.logs()}",
            )
            assert sum(len(db.epochs(i)) for i in ids) > epochs_before
            broker.start()

            # 2. Once work flows again, FLUSHALL under queued, placed and running jobs.
            def flowing_again() -> bool:
                now, done = counts(), list(db.statuses().values()).count("succeeded")
                busy = now["running"] == 2 and now["placed"] and now["queued"]
                return bool(done >= 1 and busy and broker.waiting(queue))

            wait_until(
                flowing_again,
                40,
                lambda: f"work flowing again after the restart: {db.statuses()}\n" + running.logs(),
            )
            broker.flushall()  # the waiting message is gone: it is sent again

            wait_until(
                lambda: db.all_ended(ids),
                60,
                lambda: f"every job to end: {db.statuses()}\n{running.logs()}",
            )
            jobs = check_invariants(db, {i: "succeeded" for i in ids}, [worker_dir], client)
    assert all(job.lost_runs == 0 for job in jobs.values()), {
        job.id: job.lost_runs for job in jobs.values()
    }
