"""What the fault tests share: Trainyard's real processes started and killed at will, a
Redis server of the test's own, a TCP proxy in front of PostgreSQL that can be cut, and the
checks every test ends with ("What nothing lost means" in the README), read from the
database itself.

The trainer is tests/fake_trainer.py with its `resume` step: one command that is right for a
first run and for every resumed one, so a run killed mid-epoch resumes from its checkpoint."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.core.db import make_engine
from app.core.models import TERMINAL_STATUSES, Epoch, GpuLease, Job
from tests.conftest import unavailable
from tests.e2e.service import free_port, service_env
from tests.fake_trainer import FAKE, command
from worker.procfs import ProcessInfo, processes

# Short clocks, so a fault is noticed and repaired in seconds: a host silent for 6 s is lost,
# a supervisor that cannot reach the database stops its trainer after 3 s, a placement whose
# message went missing is sent again after 3 s.
FAST = {
    "heartbeat_seconds": "0.5",
    "host_timeout_seconds": "6",
    "schedule_seconds": "0.2",
    "dispatch_timeout_seconds": "3",
    "cancel_grace_seconds": "2",
    "submit_rate_per_minute": "0",
}


def chaos_env(data_dir: Path, steps: Iterable[str], **settings: str) -> dict[str, str]:
    """service_env with the FAST clocks and the fake trainer running `steps`."""
    return service_env(data_dir, **{**FAST, "trainer_command": command(*steps), **settings})


def token_of(data_dir: Path) -> str:
    """The admin token that the first `trainyard up` on `data_dir` wrote."""
    return (data_dir / "admin-token").read_text().strip()


# -- processes ------------------------------------------------------------------------------


class Service:
    """`python -m app.cli ...` processes, each in a session of its own, started, signalled
    and restarted by name; whatever is left is stopped at the end (SIGTERM, then SIGKILL of
    each one's process group)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[subprocess.Popen[bytes]] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[name] = process
        self.started.append(process)
        return process

    def signal(self, name: str, signum: int, timeout: float = 60) -> int:
        """Send `signum` to `name` and wait for it to end; returns its exit status."""
        process = self.running.pop(name)
        process.send_signal(signum)
        return process.wait(timeout=timeout)

    def reap(self, name: str, timeout: float = 60) -> int:
        """Wait for `name`, ended by other means (a SIGKILL of its whole family)."""
        return self.running.pop(name).wait(timeout=timeout)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        """Every log's last lines, for a failure message."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-40:]
            parts.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def service(log_dir: Path, data_dirs: Iterable[Path]) -> Iterator[Service]:
    """A Service, closed at the end; then no trainer of `data_dirs` may be left (one that is
    gets SIGKILLed, so a failing test leaves nothing behind, and the test fails)."""
    running, folders, failing = Service(log_dir), list(data_dirs), False
    try:
        yield running
    except BaseException:
        failing = True  # that failure is the one to report
        raise
    finally:
        running.close()
        left = kill_trainers(folders)
        assert failing or not left, f"trainers outlived the service: {left}"


def is_trainer(process: ProcessInfo) -> bool:
    return str(FAKE) in process.argv


def trainers(data_dirs: Iterable[Path]) -> list[ProcessInfo]:
    """Live fake trainers working under one of `data_dirs` (their --workdir is a job folder
    there)."""
    roots = [str(path) for path in data_dirs]
    found = []
    for process in processes():
        if process.state == "Z" or not is_trainer(process):
            continue
        argv = process.argv
        workdirs = [argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "--workdir"]
        if any(w == r or w.startswith(r + os.sep) for w in workdirs for r in roots):
            found.append(process)
    return found


def live_in_groups(pgids: Iterable[int]) -> list[ProcessInfo]:
    """Live processes of the given process groups (a trainer and whatever it started)."""
    groups = set(pgids)
    return [p for p in processes() if p.pgid in groups and p.state != "Z"]


def kill_trainers(data_dirs: Iterable[Path]) -> list[ProcessInfo]:
    """SIGKILL the process group of every trainer left under `data_dirs`; returns them."""
    left = trainers(data_dirs)
    for process in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pgid, signal.SIGKILL)
    return left


def wait_until(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str]) -> Any:
    """Poll `condition()` until it returns something true; fail after `timeout` seconds,
    saying `what` (a callable is asked only then: e.g. the service's logs)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {said}")
        time.sleep(0.1)


# -- the API -------------------------------------------------------------------------------


def healthz(base_url: str) -> tuple[int, dict[str, Any]]:
    """GET /healthz: (status code, body); (0, {}) when nothing answers."""
    try:
        response = httpx.get(f"{base_url}/healthz", timeout=5)
    except httpx.TransportError:
        return 0, {}
    return response.status_code, response.json()


# -- the database, read directly ------------------------------------------------------------


class Database:
    """The service's database, read by the test itself (not through the API, which may be
    down)."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = make_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def jobs(self) -> dict[int, Job]:
        with Session(self.engine, expire_on_commit=False) as session:
            return {job.id: job for job in session.scalars(select(Job).order_by(Job.id))}

    def job(self, job_id: int) -> Job:
        job = self.jobs().get(job_id)
        assert job is not None, f"job {job_id} is gone"
        return job

    def statuses(self) -> dict[int, str]:
        return {job_id: str(job.status) for job_id, job in self.jobs().items()}

    def epochs(self, job_id: int) -> dict[int, int]:
        """Epoch number -> the attempt that recorded it."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(Epoch.epoch, Epoch.attempt).where(Epoch.job_id == job_id)
            ).all()
        return {int(epoch): int(attempt) for epoch, attempt in rows}

    def active_leases(self) -> list[tuple[int, str, int]]:
        """(job, host, GPU index) of every lease not released."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(GpuLease.job_id, GpuLease.host, GpuLease.gpu_index).where(
                    GpuLease.released_at.is_(None)
                )
            ).all()
        return [(int(j), str(h), int(g)) for j, h, g in rows]

    def all_ended(self, job_ids: Iterable[int]) -> bool:
        statuses = self.statuses()
        return all(statuses.get(job_id) in TERMINAL_STATUSES for job_id in job_ids)


@contextlib.contextmanager
def database(url: str) -> Iterator[Database]:
    db = Database(url)
    try:
        yield db
    finally:
        db.close()


def check_invariants(
    db: Database,
    expected: dict[int, str],
    data_dirs: Iterable[Path],
    client: httpx.Client | None = None,
) -> dict[int, Job]:
    """What every fault test ends with: exactly the `expected` jobs exist, each in its
    expected (terminal) status; a succeeded job recorded epochs 1..E exactly once (E its
    spec's epochs; UNIQUE(job_id, epoch) forbids a second record, so the set is checked) and
    its current epoch is E; any other job recorded a gapless prefix 1..k; no lease is held
    by an ended job; no trainer process is left. With `client`, the API agrees on each job's
    status and current epoch. Returns the jobs."""
    jobs = db.jobs()
    assert set(jobs) == set(expected), f"jobs lost or added: {sorted(jobs)} != {sorted(expected)}"
    for job_id, status in expected.items():
        job = jobs[job_id]
        assert job.status == status, (job_id, job.status, job.failure_reason, job.failure_message)
        recorded = sorted(db.epochs(job_id))
        if status == "succeeded":
            total = int(job.spec["epochs"])
            assert recorded == list(range(1, total + 1)), (job_id, recorded)
        else:
            assert recorded == list(range(1, len(recorded) + 1)), (job_id, recorded)
        if client is not None:
            seen = client.get(f"/jobs/{job_id}").json()
            assert seen["status"] == status, seen
            assert (seen["current_epoch"] or 0) == (recorded[-1] if recorded else 0), seen
    held = [lease for lease in db.active_leases() if jobs[lease[0]].status in TERMINAL_STATUSES]
    assert not held, f"leases held by ended jobs: {held}"
    left = trainers(data_dirs)
    assert not left, f"trainers left: {left}"
    return jobs


# -- a Redis server of the test's own -------------------------------------------------------


class PrivateRedis:
    """A redis-server on a spare port, without persistence: stopped (SIGKILL, a crash) and
    started again, it comes back empty, as a restarted broker that lost every message."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis", "no redis-server on PATH to start a private one")
        with (self.workdir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(binary),
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._answers, 20, "the private redis-server to answer")

    def _answers(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            assert self.process is not None and self.process.poll() is None, (
                self.workdir / "redis.log"
            ).read_text()
            return False
        finally:
            client.close()

    def crash(self) -> None:
        """SIGKILL: every message, queued or unacknowledged, is gone with it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def flushall(self) -> None:
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def waiting(self, queue: str) -> int:
        """Messages waiting in `queue` (a Celery queue is a Redis list of that name)."""
        client = self.client()
        try:
            return int(client.llen(queue))
        finally:
            client.close()


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.crash()


# -- a TCP proxy that can be cut ------------------------------------------------------------


class TcpProxy:
    """127.0.0.1:<spare port> -> `target`, one pair of pumping threads per connection.

    `cut()` closes every connection and the listening socket, so new connections are
    refused (as by a database server that is down); `restore()` listens again on the same
    port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.listener: socket.socket | None = None
        self.acceptor: threading.Thread | None = None
        self.accepted = 0

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.2)
        self.listener = listener
        self.acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self.acceptor.start()

    def _accept(self, listener: socket.socket) -> None:
        while self.listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self.lock:
                if self.listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self.sockets.update((client, upstream))
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self.lock:
                for sock in (source, sink):
                    if sock in self.sockets:
                        self.sockets.discard(sock)
                        sock.close()

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        with self.lock:
            listener, self.listener = self.listener, None
            doomed, self.sockets = set(self.sockets), set()
        if listener is not None:
            listener.close()
        if self.acceptor is not None:
            self.acceptor.join(timeout=5)
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self.start()

    def url(self, database_url: str) -> str:
        """`database_url` with its host and port replaced by the proxy's."""
        from sqlalchemy import make_url

        proxied = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return proxied.render_as_string(hide_password=False)


@contextlib.contextmanager
def tcp_proxy(target: tuple[str, int]) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.cut()


def postgres_target(database_url: str) -> tuple[str, int]:
    from sqlalchemy import make_url

    url = make_url(database_url)
    return (url.host or "127.0.0.1", url.port or 5432)
