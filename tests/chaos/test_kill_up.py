"""The whole embedded service SIGKILLed mid-epoch (`trainyard up`, its API and its worker at
once, as a power cut of the service would), then a new `trainyard up` on the same data
directory: every job finishes, each epoch recorded once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.chaos.harness import (
    chaos_env,
    check_invariants,
    database,
    is_trainer,
    service,
    token_of,
    trainers,
    wait_until,
)
from tests.e2e.service import api_client, free_port, wait_healthy
from worker.procfs import descendants

pytestmark = pytest.mark.chaos

EPOCHS = 5


def test_sigkill_of_the_whole_service_then_a_new_up_finishes_every_job(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    # 2 simulated GPUs and a CPU slot: three jobs run at once, the fourth waits.
    env = chaos_env(data_dir, ["started", "resume:1", "finished"], simulated_gpus="2")
    up = ["up", "--port", str(port)]
    with (
        service(tmp_path / "logs", [data_dir]) as running,
        database(f"sqlite:///{data_dir / 'trainyard.db'}") as db,
    ):
        first = running.start("up-1", up, env)
        wait_healthy(base_url)
        with api_client(base_url, token_of(data_dir)) as client:
            specs = [{"dataset": "synthetic", "epochs": EPOCHS, "gpus": g} for g in (1, 1, 0, 1)]
            ids = [client.post("/jobs", json=spec).json()["id"] for spec in specs]
        wait_until(
            lambda: len(db.epochs(ids[0])) >= 2 and all(db.epochs(i) for i in ids[:3]),
            40,
            lambda: f"three runs, each past epoch 1: {db.statuses()}\n{running.logs()}",
        )
        before = db.jobs()
        assert [before[i].status for i in ids] == ["running", "running", "running", "queued"]
        # Mid-epoch: `up`, the API and the worker SIGKILLed together. The trainers are left
        # to notice on their own (their stdin, the worker's pipe, closes).
        service_pids = [first.pid] + [p.pid for p in descendants(first.pid) if not is_trainer(p)]
        assert len(service_pids) >= 3, descendants(first.pid)
        for pid in service_pids:
            os.kill(pid, signal.SIGKILL)
        running.reap("up-1")
        wait_until(lambda: not trainers([data_dir]), 15, "the trainers to end with their worker")
        recorded = {job_id: db.epochs(job_id) for job_id in ids}

        running.start("up-2", up, env)
        wait_healthy(base_url)
        wait_until(
            lambda: db.all_ended(ids),
            50,
            lambda: f"every job to end: {db.statuses()}\n{running.logs()}",
        )
        with api_client(base_url, token_of(data_dir)) as client:
            jobs = check_invariants(db, {i: "succeeded" for i in ids}, [data_dir], client)
        for job_id in ids[:3]:
            # Resumed, not restarted: the epochs of the killed run stay as it recorded them,
            # the new run recorded only what came after. A worker killed on a machine that
            # kept running is not a lost host: the run is not counted.
            epochs = db.epochs(job_id)
            assert (jobs[job_id].attempt, jobs[job_id].lost_runs) == (2, 0)
            assert {e: a for e, a in epochs.items() if a == 1} == recorded[job_id], epochs
            assert set(epochs.values()) == {1, 2} and recorded[job_id], epochs
        assert jobs[ids[3]].attempt == 1
