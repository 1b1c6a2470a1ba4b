"""Start Trainyard's real processes for end-to-end tests and talk to them over HTTP."""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from worker.procfs import trainers_in

TERMINAL = {"succeeded", "failed", "cancelled"}
# One short epoch on synthetic data (the zoo's MLP: these tests are about placement, not the
# recipe): the trainer still holds its GPUs for its start-up, while placement is checked.
ONE_EPOCH_JOB = {
    "dataset": "synthetic",
    "model": "mlp",
    "epochs": 1,
    "mixed_precision": "auto",
    "batch_size": 32,
}


# Ports for the servers tests start, below Linux's ephemeral range (32768-60999 by default):
# a port the kernel hands out for bind(0) can be taken by any outgoing connection, or by a
# parallel test process, between the check and the server's own bind. Each xdist worker
# takes its own block, and walks it from a random start (another suite may run beside).
FIRST_TEST_PORT = 20000
PORTS_PER_WORKER = 1000


def _worker_ports() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    # 12 blocks at most: the last ends at 32000, below the ephemeral range.
    first = FIRST_TEST_PORT + (int(worker or 0) % 12) * PORTS_PER_WORKER
    start = random.randrange(PORTS_PER_WORKER)
    for step in itertools.count():
        yield first + (start + step) % PORTS_PER_WORKER


_ports = _worker_ports()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing holds now and that no other test will be given."""
    for port in itertools.islice(_ports, PORTS_PER_WORKER):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("every port in this test process's block is taken")


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env["TRAINYARD_DATA_DIR"] = str(data_dir)
    env["TRAINYARD_CANCEL_GRACE_SECONDS"] = "5"
    env.update({f"TRAINYARD_{key.upper()}": value for key, value in settings.items()})
    return env


@contextmanager
def processes(
    commands: list[list[str]], env: dict[str, str], log_dir: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run `trainyard ...` commands; SIGTERM them (then SIGKILL) at the end."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen[bytes]] = []
    try:
        for index, command in enumerate(commands):
            log = (log_dir / f"{index}-{command[0]}.log").open("wb")
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "app.cli", *command],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        yield started
    finally:
        stop(started)


def stop(started: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_healthy(base_url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} never became healthy")


def wait_for(client: httpx.Client, job_id: int, condition: Any, timeout: float) -> dict[str, Any]:
    """Poll GET /jobs/{id} until `condition(job)` holds; returns the job."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if condition(job):
            return job
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} never reached the condition; last seen: {job}")


def wait_for_hosts(client: httpx.Client, names: set[str], timeout: float = 60) -> None:
    """Until every named worker host has registered itself (GET /gpus)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if names <= {host["name"] for host in client.get("/gpus").json()}:
            return
        time.sleep(0.2)
    raise TimeoutError(f"hosts {names} never registered")


def api_client(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def add_user(env: dict[str, str], name: str, admin: bool = False) -> str:
    """`trainyard user add` as an operator runs it; returns the printed token."""
    command = [sys.executable, "-m", "app.cli", "user", "add", name]
    result = subprocess.run(
        [*command, "--admin"] if admin else command,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def trainer_pids(job_dir: Path) -> list[int]:
    """Live trainer processes of this job (started with `--workdir <its folder>`)."""
    return [process.pid for process in trainers_in(job_dir)]
