"""A worker host SIGKILLed mid-run (a power cut of that host): two `trainyard worker` hosts
with data directories of their own share only PostgreSQL and Redis. Once the lost host has
been silent for a host timeout, its job goes back to the queue (a lost run, counted), is
placed on the other host, and resumes there from the checkpoint the first host stored in
the database: each epoch is recorded once, and the second run trains only what was left."""

from __future__ import annotations

import os
import re
import signal
import uuid
from pathlib import Path

import pytest

from tests.chaos.harness import (
    chaos_env,
    check_invariants,
    database,
    service,
    trainers,
    wait_until,
)
from tests.e2e.service import add_user, api_client, free_port, wait_for_hosts, wait_healthy

pytestmark = pytest.mark.chaos

EPOCHS = 6


def test_a_killed_host_s_job_resumes_on_another_from_its_stored_checkpoint(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    tag = uuid.uuid4().hex[:6]
    names = (f"w1-{tag}", f"w2-{tag}")
    steps = ["started", "checkpoints", "resume:1", "finished"]
    shared = {
        "database_url": postgres_url,
        "broker_url": redis_url,
        "queue": f"trainyard-chaos-{tag}",
        "simulated_gpus": "1",
    }
    dirs = {name: tmp_path / f"{name}-data" for name in names}
    api_env = chaos_env(tmp_path / "api-data", steps, **shared)
    token = add_user(api_env, "operator", admin=True)  # migrates the empty database
    with (
        service(tmp_path / "logs", dirs.values()) as running,
        database(postgres_url) as db,
    ):
        running.start("api", ["api", "--port", str(port)], api_env)
        workers = {
            name: running.start(
                name, ["worker"], chaos_env(path, steps, **shared, worker_name=name)
            )
            for name, path in dirs.items()
        }
        wait_healthy(base_url)
        with api_client(base_url, token) as client:
            wait_for_hosts(client, set(names))
            spec = {"dataset": "synthetic", "epochs": EPOCHS, "gpus": 1}
            job_id = client.post("/jobs", json=spec).json()["id"]
            wait_until(
                lambda: len(db.epochs(job_id)) >= 2,
                30,
                lambda: f"job {job_id} past epoch 2: {db.statuses()}\n{running.logs()}",
            )
            lost = db.job(job_id).host
            assert lost in names
            (survivor,) = set(names) - {lost}
            # The whole worker process group at once; the trainer (a group of its own) is
            # left to notice that its worker's pipe closed.
            os.killpg(workers[lost].pid, signal.SIGKILL)
            running.reap(lost)
            wait_until(lambda: not trainers([dirs[lost]]), 15, "the lost host's trainer to end")
            recorded = db.epochs(job_id)

            wait_until(
                lambda: db.all_ended([job_id]),
                45,
                lambda: f"job {job_id} to end: {db.statuses()}\n{running.logs()}",
            )
            jobs = check_invariants(db, {job_id: "succeeded"}, dirs.values(), client)
            final = db.epochs(job_id)
            log = client.get(f"/jobs/{job_id}/logs").text
    job = jobs[job_id]
    assert (job.host, job.attempt, job.lost_runs) == (survivor, 2, 1), job.failure_message
    # The survivor's trainer found the lost host's newest stored checkpoint in its own
    # folder (restored from the database), and went on from there.
    assert f"attempt 2 on {survivor}" in log, log
    found = re.search(r"resuming after epoch (\d+) from epoch-(\d+)\.npz", log)
    assert found is not None, log
    resumed_after = int(found.group(1))
    assert resumed_after >= max(recorded), (resumed_after, recorded)
    assert not any((dirs[survivor] / "jobs").glob("*/checkpoints/*"))  # dropped at the end
    assert {e: a for e, a in final.items() if e <= max(recorded)} == recorded, final
    assert {a for e, a in final.items() if e > max(recorded)} == {2}, final
