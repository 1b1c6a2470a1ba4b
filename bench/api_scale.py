"""API at scale: request latency, submission throughput and a scheduling pass on a big database.

Seeds a fresh database, built by the project's own migrations, with many jobs of several
owners (mixed statuses, specs as the API stores them, GPU lease history) and their epoch
rows, then measures the real API served by `trainyard api` in a subprocess on a free port:

- GET /jobs/{id} (random ids), GET /jobs?limit=50 and ?limit=500, each also with a status
  filter (the five statuses in turn): sequential requests, p50 and p99 in milliseconds;
- POST /jobs with --clients concurrent clients: accepted submissions per second (spread
  over --api-processes `trainyard api` processes, as behind a load balancer);
- one scheduling pass (worker/scheduler.py's `schedule`, called directly, in a process
  warmed as a worker's is) with the queued jobs waiting for a host with a few simulated
  GPUs: the first pass (places what fits, writes the first waiting reasons), the passes
  after it (what a worker runs each second, each rewriting a share of the thousands of
  reasons still unwritten) and, once every reason is written, passes over a quiet queue;
- GET /jobs/{id}/logs?tail=100 on a train.log of --log-mb MiB.

Prints one JSON line with every figure, the targets and whether each is met.

    python bench/api_scale.py                               # PostgreSQL 100k jobs, SQLite 10k
    python bench/api_scale.py --backend postgresql --jobs 2000 --posts 200   # a quick run
    python bench/api_scale.py --backend sqlite --jobs 1000 --epochs-per-job 5 --log-mb 10

The PostgreSQL database (trainyard_bench_<random>, made with --postgres-url's server) and
the SQLite file are dropped at the end unless --keep. POST /jobs runs with the per-user
submission rate limit and active-job quota at their defaults, each client switching to a
fresh user every --posts-per-user submissions (below both limits); --no-limits turns both
off instead (one user per client).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, func, insert, make_url, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.core import job_tally
from app.core.config import Settings
from app.core.db import make_engine
from app.core.heap import freeze_startup_objects
from app.core.migrate import upgrade_database
from app.core.models import Epoch, GpuLease, Job
from app.core.spec import JobSpec
from app.core.users import create_user
from worker import scheduler
from worker.gpus import discover
from worker.inventory import register_host
from worker.scheduler import schedule

REPO = Path(__file__).resolve().parents[1]
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
# What the jobs that are neither queued nor running ended as.
ENDED_MIX = (("succeeded", 0.65), ("failed", 0.25), ("cancelled", 0.10))
FAILURES = (("user_error", "ValueError: bad dataset"), ("oom", "out of memory"), ("nan_loss", ""))
HOST_GPUS = 4  # the registered host the scheduling pass places on
TARGETS = {  # figure -> (bound, "max" or "min", backends it applies to)
    "get_job_ms.p99": (20.0, "max", ("postgresql", "sqlite")),
    "list_50_ms.p99": (50.0, "max", ("postgresql", "sqlite")),
    "list_50_status_ms.p99": (50.0, "max", ("postgresql", "sqlite")),
    "list_500_ms.p99": (200.0, "max", ("postgresql", "sqlite")),
    "list_500_status_ms.p99": (200.0, "max", ("postgresql", "sqlite")),
    "post_jobs_per_s": (200.0, "min", ("postgresql",)),
    "schedule_pass_ms.first": (50.0, "max", ("postgresql", "sqlite")),
    "schedule_pass_ms.p50": (50.0, "max", ("postgresql", "sqlite")),
    "schedule_pass_ms.quiet_p50": (50.0, "max", ("postgresql", "sqlite")),
    "log_tail_ms.p99": (50.0, "max", ("postgresql", "sqlite")),
}


# ---------------------------------------------------------------- seeding


def _spec(rng: random.Random, epochs: int, priority: int) -> dict[str, Any]:
    gpus = rng.choices((0, 1, 2, 4), weights=(1, 5, 3, 1))[0]
    return JobSpec(
        name=rng.choice((None, f"sweep-{rng.randrange(100)}", "baseline")),
        dataset=rng.choice(("cifar10", "cifar10", "digits", "synthetic")),
        gpus=gpus,
        epochs=epochs,
        lr=rng.choice((0.001, 0.005, 0.01, 0.05)),
        batch_size=rng.choice((64, 128)),
        priority=priority,
        seed=rng.choice((None, rng.randrange(2**31))),
    ).model_dump()


def plan(
    jobs: int, queued: int, running: int, epochs_total: int, owners: list[int], seed: int = 0
) -> tuple[list[dict[str, Any]], list[int], list[dict[str, Any]]]:
    """Job rows (ids 1..jobs, oldest first), each job's recorded epoch count (summing to
    `epochs_total` over the jobs that ran) and its GPU lease rows. The queued and running
    jobs are among the newest, as on a live box."""
    rng = random.Random(seed)
    recent = list(range(max(1, jobs - (queued + running) * 5 // 4), jobs + 1))
    waiting = set(rng.sample(recent, min(queued, len(recent))))
    busy = set(rng.sample([i for i in recent if i not in waiting], running))
    start = datetime(2025, 11, 27, tzinfo=UTC)
    step = timedelta(days=365) / max(jobs, 1)
    statuses = [
        "queued" if i in waiting else "running" if i in busy else "" for i in range(1, jobs + 1)
    ]
    ended = [s for s, _ in ENDED_MIX]
    weights = [w for _, w in ENDED_MIX]
    statuses = [s or rng.choices(ended, weights)[0] for s in statuses]
    planned = [rng.choice((10, 30, 50, 70, 70, 100, 150)) for _ in statuses]
    done = [
        0 if s == "queued" else p if s == "succeeded" else int(p * rng.random())
        for s, p in zip(statuses, planned, strict=True)
    ]
    # Scale the recorded counts (and the planned epochs with them) to the total asked for.
    scale = epochs_total / max(sum(done), 1)
    counts = [int(d * scale) for d in done]
    ran = [i for i, d in enumerate(done) if d]
    for i in rng.sample(ran, min(len(ran), epochs_total - sum(counts))):
        counts[i] += 1
    rows, leases = [], []
    box = 0
    for index, status in enumerate(statuses):
        job_id = index + 1
        epochs = max(
            1, min(1000, counts[index] if status == "succeeded" else round(planned[index] * scale))
        )
        epochs = max(epochs, counts[index])
        priority = rng.choices((0, 1, 5), weights=(95, 4, 1))[0]
        spec = _spec(rng, epochs, priority)
        created = start + step * index
        row: dict[str, Any] = {
            "id": job_id,
            "name": spec["name"],
            "owner_id": owners[rng.randrange(len(owners))],
            "status": status,
            "priority": priority,
            "spec": spec,
            "attempt": 0 if status == "queued" else 1,
            "lost_runs": 0,
            "created_at": created,
            "started_at": None,
            "finished_at": None,
            "heartbeat_at": None,
            "host": None,
            "placed_at": None,
            "replicas": None,
            "failure_reason": None,
            "failure_message": None,
        }
        if status != "queued":
            box += 1
            host = f"gpu-box-{box % 50 if status != 'running' else 100 + box:03d}"
            started = created + timedelta(minutes=rng.randrange(1, 120))
            row.update(host=host, placed_at=started, started_at=started, heartbeat_at=started)
            row["replicas"] = max(spec["gpus"], 1)
            if status != "running":
                row["finished_at"] = started + timedelta(seconds=30 * max(counts[index], 1))
            if status == "failed":
                row["failure_reason"], row["failure_message"] = rng.choice(FAILURES)
            elif status == "cancelled":
                row["failure_reason"], row["failure_message"] = "cancelled", "cancelled"
            for gpu in range(spec["gpus"]):
                leases.append(
                    {
                        "job_id": job_id,
                        "attempt": 1,
                        "host": host,
                        "gpu_index": gpu,
                        "leased_at": started,
                        "released_at": row["finished_at"],
                    }
                )
        if "gpus" in Job.__table__.columns:  # since migration 0009 (older code: before/after runs)
            row["gpus"] = spec["gpus"]
        rows.append(row)
    return rows, counts, leases


def epoch_rows(counts: list[int], started: list[datetime]) -> Iterator[tuple[Any, ...]]:
    for index, count in enumerate(counts):
        for epoch in range(1, count + 1):
            loss = 2.3 * math.exp(-epoch / 25) + 0.05
            yield (
                index + 1,
                epoch,
                1,
                loss,
                1 - loss / 2.5,
                loss * 1.1,
                1 - loss / 2.4,
                0.005 * (1 - epoch / (count + 1)),
                31.5,
                1,
                started[index] + timedelta(seconds=30 * epoch),
            )


EPOCH_COLUMNS = (
    "job_id", "epoch", "attempt", "loss", "accuracy", "val_loss", "val_accuracy", "lr",
    "seconds", "replicas", "recorded_at",
)  # fmt: skip


def seed(
    engine: Engine, rows: list[dict[str, Any]], counts: list[int], leases: list[dict[str, Any]]
) -> None:
    started = [row["started_at"] or row["created_at"] for row in rows]
    if engine.dialect.name == "postgresql":
        _seed_postgresql(engine, rows, counts, leases, started)
        return
    with engine.begin() as connection:
        connection.execute(insert(Job), rows)
        if leases:
            connection.execute(insert(GpuLease), leases)
        batch: list[dict[str, Any]] = []
        for values in epoch_rows(counts, started):
            batch.append(dict(zip(EPOCH_COLUMNS, values, strict=True)))
            if len(batch) == 50_000:
                connection.execute(insert(Epoch), batch)
                batch = []
        if batch:
            connection.execute(insert(Epoch), batch)


def _seed_postgresql(
    engine: Engine,
    rows: list[dict[str, Any]],
    counts: list[int],
    leases: list[dict[str, Any]],
    started: list[datetime],
) -> None:
    """COPY, through psycopg's copy protocol: far faster than INSERTs at millions of rows."""
    job_columns = list(rows[0])
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SET statement_timeout = 0")  # the app's engine allows a statement 60 s
        with cursor.copy(f"COPY jobs ({', '.join(job_columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([json.dumps(v) if k == "spec" else v for k, v in row.items()])
        if leases:
            with cursor.copy(f"COPY gpu_leases ({', '.join(leases[0])}) FROM STDIN") as copy:
                for lease in leases:
                    copy.write_row(list(lease.values()))
        with cursor.copy(f"COPY epochs ({', '.join(EPOCH_COLUMNS)}) FROM STDIN") as copy:
            for values in epoch_rows(counts, started):
                copy.write_row(values)
        cursor.execute("SELECT setval(pg_get_serial_sequence('jobs', 'id'), max(id)) FROM jobs")
        raw.commit()
    finally:
        raw.close()


@contextmanager
def fresh_database(
    backend: str, admin_url: str, workdir: Path, keep: bool, template: str | None = None
) -> Iterator[str]:
    """The URL of a new database, empty or (PostgreSQL) a copy of `template`, which nobody
    may be connected to; dropped afterwards unless `keep`."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'trainyard.db'}"
        return
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"trainyard_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        if template is None:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        else:
            # Copied file by file (PostgreSQL 15 writes the whole copy to its WAL by
            # default), then a checkpoint: what runs next has nothing of the copy to flush.
            version = int(connection.execute(text("SHOW server_version_num")).scalar_one())
            strategy = " STRATEGY FILE_COPY" if version >= 150000 else ""
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}'))
            connection.execute(text("CHECKPOINT"))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def poster_tokens(session: Session, clients: int, users: int, prefix: str) -> list[list[str]]:
    """Tokens of `users` new users for each of `clients` POST clients."""
    return [
        [create_user(session, f"{prefix}-{k}-{u}")[1] for u in range(users)] for k in range(clients)
    ]


# ---------------------------------------------------------------- measuring


def summary(samples: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles, in milliseconds."""
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)

    return {
        "p50": rank(0.5),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": rank(1.0),
        "n": len(ordered),
    }


@dataclass(frozen=True)
class Server:
    base: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the API process has used (Linux /proc; 0.0 elsewhere): a figure that the
        noise of a shared machine disturbs far less than latencies."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_gets(
    client: httpx.Client, server: Server, paths: list[str], warmup: int = 10
) -> dict[str, float]:
    """One request at a time, after a few unmeasured ones; also the API process's CPU time
    per request."""
    for path in paths[:warmup]:
        client.get(path)
    samples = []
    cpu = server.cpu_seconds()
    for path in paths:
        start = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    cpu_ms = (server.cpu_seconds() - cpu) * 1000 / len(paths)
    return {**summary(samples), "server_cpu_ms": round(cpu_ms, 2)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def api_server(
    database_url: str,
    data_dir: Path,
    limits: bool,
    log: Path,
    extra_env: dict[str, str] | None = None,
    repo: Path = REPO,
) -> Iterator[Server]:
    """`trainyard api` of the checkout at `repo` in a subprocess on a free port (`extra_env`:
    more settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(TRAINYARD_DATABASE_URL=database_url, TRAINYARD_DATA_DIR=str(data_dir))
    env.update(extra_env or {})
    if not limits:
        env.update(TRAINYARD_SUBMIT_RATE_PER_MINUTE="0", TRAINYARD_MAX_ACTIVE_JOBS_PER_USER="0")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(port)],
            cwd=repo,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Server(base, process.pid)
    finally:
        if process.poll() is not None:
            print(
                f"the API exited ({process.returncode}):\n{log.read_text()[-3000:]}",
                file=sys.stderr,
            )
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def post_throughput(
    servers: list[Server], tokens: list[list[str]], posts: int, per_user: int
) -> dict[str, Any]:
    """`len(tokens)` clients, each a thread with its own connection, submitting one job after
    another; client k switches to its next user every `per_user` submissions and talks to
    server k modulo their number (as a load balancer would spread them)."""
    body = {"dataset": "digits", "epochs": 3, "gpus": 1}
    per_client = posts // len(tokens)
    codes: dict[str, int] = {}
    lock = threading.Lock()
    start_line = threading.Barrier(len(tokens) + 1)

    def client(own: list[str], server: Server) -> None:
        seen: dict[str, int] = {}
        with httpx.Client(base_url=server.base, timeout=60) as http:
            http.get("/healthz")  # connected before the clock starts
            start_line.wait()
            for n in range(per_client):
                headers = {"Authorization": f"Bearer {own[n // per_user]}"}
                try:
                    status = str(http.post("/jobs", json=body, headers=headers).status_code)
                except httpx.TransportError as error:  # counted, and the server's log kept
                    status = type(error).__name__
                seen[status] = seen.get(status, 0) + 1
        with lock:
            for status, count in seen.items():
                codes[status] = codes.get(status, 0) + count

    threads = [
        threading.Thread(target=client, args=(own, servers[k % len(servers)]))
        for k, own in enumerate(tokens)
    ]
    for thread in threads:
        thread.start()
    start_line.wait()
    start, cpu = time.perf_counter(), sum(server.cpu_seconds() for server in servers)
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    cpu = sum(server.cpu_seconds() for server in servers) - cpu
    accepted = codes.get("201", 0)
    return {
        "jobs_per_s": round(accepted / elapsed, 1),
        "clients": len(tokens),
        "submitted": per_client * len(tokens),
        "accepted": accepted,
        "status_codes": dict(sorted(codes.items())),
        "seconds": round(elapsed, 2),
        "server_cpu_ms": round(cpu * 1000 / max(sum(codes.values()), 1), 2),
    }


def scheduling(database_url: str, data_dir: Path, passes: int) -> dict[str, Any]:
    """Register a host with HOST_GPUS simulated GPUs as its worker would, then time
    `schedule` as the worker calls it: a fresh session per pass."""
    settings = Settings(
        database_url=database_url,
        data_dir=data_dir,
        worker_name="bench-host",
        simulated_gpus=HOST_GPUS,
    )
    engine = make_engine(database_url)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    with sessions() as session:
        register_host(session, settings, discover(HOST_GPUS)[0], "simulated")
        queued = session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued"))
    # A worker has passed before the burst it meets: its mappers are configured and its
    # statements compiled. One pass in a transaction rolled back afterwards warms this
    # process the same way (35 ms of mapper set-up alone) and leaves the database as seeded.
    with engine.connect() as connection:
        seeded = connection.begin()
        if engine.dialect.name == "sqlite":  # pysqlite leaves BEGIN to the first write
            connection.exec_driver_sql("BEGIN")
        with Session(bind=connection, join_transaction_mode="create_savepoint") as session:
            schedule(session, settings)
        seeded.rollback()
    freeze_startup_objects()  # as the worker does once it is ready

    def timed(count: int) -> tuple[list[float], int]:
        times, placed = [], 0
        for _ in range(count):
            with sessions() as session:
                start = time.perf_counter()
                placed += len(schedule(session, settings))
                times.append((time.perf_counter() - start) * 1000)
        return times, placed

    # Right after the burst: the first pass, then passes that each rewrite a bounded number
    # of the thousands of reasons still unwritten.
    times, placed = timed(passes + 1)
    # Once every reason is written (one untimed pass writes them all): a quiet queue, where
    # a pass finds nothing to write, what a worker meets most of the time.
    scheduler.REASONS_PER_PASS, bounded = 10**9, scheduler.REASONS_PER_PASS
    try:
        timed(1)
    finally:
        scheduler.REASONS_PER_PASS = bounded
    quiet, _ = timed(passes)
    engine.dispose()
    steady = summary(times[1:])
    return {
        "first": round(times[0], 2),
        "p50": steady["p50"],
        "max": steady["max"],
        "quiet_p50": summary(quiet)["p50"],
        "quiet_max": summary(quiet)["max"],
        "passes": passes,
        "queued": queued,
        "placed": placed,
        "host_gpus": HOST_GPUS,
    }


def at_least_one(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def write_log(path: Path, mib: int) -> int:
    """A trainer-like stderr of `mib` MiB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"2026-11-27 10:{i // 60 % 60:02d}:{i % 60:02d}.123456: I tensorflow/core/step.cc:42] "
        f"Epoch {i % 70 + 1}/70 step {i % 781}/781 - loss: {2.3 / (1 + i % 97):.4f} - "
        f"accuracy: {i % 1000 / 1000:.4f}\n"
        for i in range(8000)
    ]
    block = "".join(lines).encode()
    with path.open("wb") as handle:
        for _ in range(math.ceil(mib * 1024 * 1024 / len(block))):
            handle.write(block)
    return path.stat().st_size


# ---------------------------------------------------------------- one backend


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    jobs = args.jobs if backend == "postgresql" else args.sqlite_jobs
    queued = args.queued if args.queued is not None else jobs // 10
    running = max(1, jobs // 1000)
    workdir = Path(tempfile.mkdtemp(prefix="trainyard-bench-"))
    data_dir = workdir / "data"
    rng = random.Random(1)
    try:
        with fresh_database(backend, args.postgres_url, workdir, args.keep) as url:
            upgrade_database(Settings(database_url=url, data_dir=data_dir))
            engine = make_engine(url)
            sessions = sessionmaker(bind=engine, expire_on_commit=False)
            with sessions() as session:
                admin_token = create_user(session, "bench-admin", is_admin=True)[1]
                owners = [create_user(session, f"owner-{i:02d}")[0].id for i in range(args.owners)]
            start = time.perf_counter()
            rows, counts, leases = plan(jobs, queued, running, jobs * args.epochs_per_job, owners)
            seed(engine, rows, counts, leases)
            with sessions() as session:  # as the passes that saw those jobs come would have
                job_tally.fold(session)
                session.commit()
            if backend == "postgresql":  # what autovacuum does to a table loaded long ago
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                    c.execute(text("SET statement_timeout = 0"))
                    c.execute(text("VACUUM ANALYZE"))
            seconds = time.perf_counter() - start
            log_job = next(row["id"] for row in reversed(rows) if row["status"] == "succeeded")
            epochs = sum(counts)
            del rows, counts, leases  # a worker holds no such heap when it freezes its own
            log_bytes = write_log(
                Settings(data_dir=data_dir).job_dir(log_job) / "train.log", args.log_mb
            )
            figures: dict[str, Any] = {
                "jobs": jobs,
                "epochs": epochs,
                "queued": queued,
                "running": running,
                "owners": args.owners,
                "seed_seconds": round(seconds, 1),
            }
            n = args.samples
            limits = not args.no_limits
            with api_server(url, data_dir, limits, workdir / "api.log") as server:
                headers = {"Authorization": f"Bearer {admin_token}"}
                with httpx.Client(base_url=server.base, headers=headers, timeout=60) as client:
                    ids = [rng.randint(1, jobs) for _ in range(n)]
                    figures["get_job_ms"] = timed_gets(client, server, [f"/jobs/{i}" for i in ids])
                    for limit in (50, 500):
                        page = f"/jobs?limit={limit}"
                        figures[f"list_{limit}_ms"] = timed_gets(client, server, [page] * n)
                        by_status = [f"{page}&status={STATUSES[i % 5]}" for i in range(n)]
                        figures[f"list_{limit}_status_ms"] = timed_gets(client, server, by_status)
                    tail = f"/jobs/{log_job}/logs?tail=100"
                    figures["log_tail_ms"] = {
                        **timed_gets(client, server, [tail] * n),
                        "bytes": log_bytes,
                    }
                figures["schedule_pass_ms"] = scheduling(url, data_dir, args.passes)
                per_user = args.posts_per_user if limits else args.posts
                users = math.ceil(args.posts / args.clients / per_user)
                with sessions() as session:
                    tokens = poster_tokens(session, args.clients, users, "poster")
                with ExitStack() as more:
                    servers = [server] + [
                        more.enter_context(
                            api_server(url, data_dir, limits, workdir / f"api-{k}.log")
                        )
                        for k in range(1, args.api_processes)
                    ]
                    post = post_throughput(servers, tokens, args.posts, per_user)
                if post["accepted"] < post["submitted"]:
                    for log in sorted(workdir.glob("api*.log")):
                        print(f"{log.name}:\n{log.read_text()[-3000:]}", file=sys.stderr)
                post["api_processes"] = args.api_processes
                post["limits"] = (
                    f"on at their defaults; each client switches user every {per_user} "
                    f"submissions ({users * args.clients} users)"
                    if limits
                    else "off (TRAINYARD_SUBMIT_RATE_PER_MINUTE=0, "
                    "TRAINYARD_MAX_ACTIVE_JOBS_PER_USER=0), one user per client"
                )
                figures["post_jobs_per_s"] = post.pop("jobs_per_s")
                figures["post"] = post
            engine.dispose()
            return figures
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def judged(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    verdicts = []
    for figure, (bound, kind, backends) in TARGETS.items():
        for backend, figures in results.items():
            if backend not in backends:
                continue
            value: Any = figures
            for part in figure.split("."):
                value = value[part]
            met = value <= bound if kind == "max" else value >= bound
            verdicts.append(
                {
                    "backend": backend,
                    "figure": figure,
                    "value": value,
                    "target": f"{'<=' if kind == 'max' else '>='} {bound:g}",
                    "met": met,
                }
            )
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument(
        "--postgres-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a server where the bench may create (and drop) its own database",
    )
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs on PostgreSQL")
    parser.add_argument("--sqlite-jobs", type=int, default=10_000, help="jobs on SQLite")
    parser.add_argument("--epochs-per-job", type=int, default=50, help="epoch rows per job")
    parser.add_argument("--queued", type=int, help="queued jobs (default: a tenth of them)")
    parser.add_argument("--owners", type=int, default=20, help="users owning the seeded jobs")
    parser.add_argument("--samples", type=int, default=200, help="requests per GET figure")
    parser.add_argument("--posts", type=int, default=2000, help="POST /jobs in all")
    parser.add_argument("--clients", type=int, default=8, help="concurrent POST clients")
    parser.add_argument(
        "--api-processes",
        type=at_least_one,
        default=1,
        help="`trainyard api` processes the POST clients are spread over",
    )
    parser.add_argument("--posts-per-user", type=int, default=50)
    parser.add_argument("--no-limits", action="store_true", help="rate limit and quota off")
    parser.add_argument(
        "--passes", type=at_least_one, default=10, help="scheduling passes after the first"
    )
    parser.add_argument("--log-mb", type=int, default=100, help="size of the train.log read")
    parser.add_argument("--keep", action="store_true", help="keep the database and data dir")
    args = parser.parse_args()
    backends = ("postgresql", "sqlite") if args.backend == "both" else (args.backend,)
    results = {backend: run_backend(backend, args) for backend in backends}
    verdicts = judged(results)
    print_report("api_scale", results, verdicts)


def print_report(
    bench: str, results: dict[str, Any], verdicts: list[dict[str, Any]], **extra: Any
) -> None:
    """The bench's one JSON line: its figures, each target's verdict and whether all are met."""
    report = {"bench": bench, "cpus": os.cpu_count(), **extra, "results": results}
    report.update(targets=verdicts, all_met=all(v["met"] for v in verdicts))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
