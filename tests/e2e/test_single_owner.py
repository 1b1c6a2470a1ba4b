"""One owner for each running thing: `trainyard up` takes its children down however it ends,
refuses to start when it cannot serve (naming who is in the way), and a second live worker
under a host name already in use is refused. Real processes, embedded defaults, and
tests/fake_trainer.py as the trainer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.e2e.service import api_client, free_port, service_env, wait_for, wait_healthy
from tests.fake_trainer import command
from worker.procfs import descendants, processes


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_registered(log: Path, timeout: float = 60) -> None:
    """Until the worker writing `log` has registered its host (its host agent says so)."""
    deadline = time.monotonic() + timeout
    while "registered:" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)


def alive(pids: set[int]) -> set[int]:
    return {p.pid for p in processes() if p.pid in pids and p.state != "Z"}


def test_sigkill_of_up_leaves_no_process_and_the_next_up_serves(
    data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(
        data_dir,
        trainer_command=command("started", "epoch:1", "hang"),
        schedule_seconds="0.2",
        heartbeat_seconds="0.5",
    )
    first = start(["up", "--port", str(port)], env, tmp_path / "up1.log")
    family: set[int] = set()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        token = (data_dir / "admin-token").read_text().strip()
        with api_client(base, token) as client:
            spec = {"dataset": "synthetic", "model": "mlp", "epochs": 100, "gpus": 0}
            job = client.post("/jobs", json=spec)
            wait_for(client, job.json()["id"], lambda j: (j["current_epoch"] or 0) >= 1, 60)
        family = {p.pid for p in descendants(first.pid)}
        assert len(family) >= 3, "API, worker and trainer should be running"
        first.send_signal(signal.SIGKILL)
        first.wait()
        # Each child is told by the kernel and shuts down cleanly: seconds, more on a loaded box.
        deadline = time.monotonic() + 20
        while alive(family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(family), [p for p in processes() if p.pid in alive(family)]
    finally:
        for pid in alive(family):  # what the fix must have ended; here only on failure
            os.kill(pid, signal.SIGKILL)
    second = start(["up", "--port", str(port)], env, tmp_path / "up2.log")
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        assert second.poll() is None
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0, (tmp_path / "up2.log").read_text()


def test_up_that_cannot_serve_exits_non_zero_naming_the_process(
    data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(data_dir)
    first = start(["up", "--port", str(port)], env, tmp_path / "up1.log")
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        # The same data directory, another port: a second instance would share jobs and GPUs.
        same_dir = subprocess.run(
            [sys.executable, "-m", "app.cli", "up", "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert same_dir.returncode == 1
        assert f"pid {first.pid}" in same_dir.stderr and str(data_dir) in same_dir.stderr
        # Another data directory, the taken port: refused before anything starts.
        other_env = service_env(tmp_path / "other")
        same_port = subprocess.run(
            [sys.executable, "-m", "app.cli", "up", "--port", str(port)],
            env=other_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert same_port.returncode == 1
        assert f"127.0.0.1:{port}" in same_port.stderr and "held by pid" in same_port.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)


def test_a_port_held_by_anything_is_named(data_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        refused = subprocess.run(
            [sys.executable, "-m", "app.cli", "up", "--port", str(port)],
            env=service_env(data_dir),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert refused.returncode == 1
    assert f"pid {os.getpid()}" in refused.stderr, refused.stderr


def test_a_second_live_worker_of_one_host_name_is_refused(data_dir: Path, tmp_path: Path) -> None:
    env = service_env(data_dir, worker_name=f"box-{uuid.uuid4().hex[:6]}", heartbeat_seconds="0.5")
    subprocess.run([sys.executable, "-m", "app.cli", "user", "list"], env=env, check=True)
    first = start(["worker"], env, tmp_path / "worker1.log")
    try:
        wait_registered(tmp_path / "worker1.log")
        second = subprocess.run(
            [sys.executable, "-m", "app.cli", "worker"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "live worker already runs as host" in second.stdout + second.stderr
        assert first.poll() is None  # the first one is untouched
        # Once the first is gone (even by SIGKILL, heartbeat still fresh), the name is free.
        first.send_signal(signal.SIGKILL)
        first.wait()
        third = start(["worker"], env, tmp_path / "worker3.log")
        try:
            wait_registered(tmp_path / "worker3.log")
            assert third.poll() is None
        finally:
            third.send_signal(signal.SIGTERM)
            third.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
