"""Nothing lost: a job survives a clean stop of the service and a SIGKILLed worker, and
its history still holds every epoch exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.e2e.service import (
    TERMINAL,
    api_client,
    free_port,
    processes,
    service_env,
    trainer_pids,
    wait_for,
    wait_healthy,
)
from worker.procfs import processes as processes_now

pytestmark = pytest.mark.training

# The zoo's MLP: epochs of about a second, and enough of them that the run is still going at
# each interruption below (this test is about restarts, not the recipe).
EPOCHS = 14
JOB = {
    "dataset": "synthetic",
    "model": "mlp",
    "epochs": EPOCHS,
    "gpus": 0,
    "batch_size": 16,
    "mixed_precision": "auto",
}


def worker_pid(up: subprocess.Popen[bytes]) -> int:
    for process in processes_now():
        if process.ppid == up.pid and "worker" in process.argv:
            return process.pid
    raise AssertionError("no worker process under trainyard up")


def test_job_survives_stop_and_worker_kill(data_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(data_dir, host_timeout_seconds="5")
    up = [["up", "--port", str(port)]]
    job_dir = data_dir / "jobs" / "1"

    # 1. A clean stop (SIGTERM to `trainyard up`) mid-run: the job goes back to the queue.
    with processes(up, env, tmp_path / "logs-1"):
        wait_healthy(base_url)
        client = api_client(base_url, (data_dir / "admin-token").read_text().strip())
        job_id = client.post("/jobs", json=JOB).json()["id"]
        wait_for(client, job_id, lambda j: (j["current_epoch"] or 0) >= 2, timeout=180)
    assert trainer_pids(job_dir) == []
    # Read while nothing runs: the next start may claim the job again within a second.
    with closing(sqlite3.connect(data_dir / "trainyard.db")) as db:
        stopped = db.execute("SELECT status, attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert stopped == ("queued", 1)

    # 2. Resumed; then the worker is SIGKILLed: its trainer must not outlive it.
    with processes(up, env, tmp_path / "logs-2") as (service,):
        wait_healthy(base_url)
        client = api_client(base_url, (data_dir / "admin-token").read_text().strip())
        resumed = wait_for(
            client,
            job_id,
            lambda j: j["attempt"] == 2 and (j["current_epoch"] or 0) >= 4,
            timeout=180,
        )
        assert resumed["status"] == "running"
        os.kill(worker_pid(service), signal.SIGKILL)
        deadline = time.monotonic() + 15
        while trainer_pids(job_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert trainer_pids(job_dir) == [], "the trainer outlived its worker"

    # 3. The next start finds the orphaned run, requeues it, and the job completes.
    with processes(up, env, tmp_path / "logs-3"):
        wait_healthy(base_url)
        client = api_client(base_url, (data_dir / "admin-token").read_text().strip())
        job = wait_for(client, job_id, lambda j: j["status"] in TERMINAL, timeout=240)
        assert job["status"] == "succeeded", job
        assert job["attempt"] == 3
        metrics = client.get(f"/jobs/{job_id}/metrics").json()
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))
    attempts = [m["attempt"] for m in metrics]
    assert attempts == sorted(attempts) and attempts[0] == 1 and attempts[-1] == 3
