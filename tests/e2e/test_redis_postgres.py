"""Production shape: `trainyard api` and two `trainyard worker` hosts as separate processes
on PostgreSQL and Redis, each with a data directory of its own: they share nothing but the
database and the broker. Logs, models and uploaded datasets go through the database; a job
whose host is SIGKILLed resumes on the other host from its stored checkpoint."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.e2e import scenarios
from tests.e2e.service import (
    TERMINAL,
    add_user,
    api_client,
    free_port,
    processes,
    service_env,
    wait_for,
    wait_for_hosts,
    wait_healthy,
)

pytestmark = pytest.mark.training


def test_hosts_that_share_only_the_database_and_the_broker(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    shared = {
        "database_url": postgres_url,
        "broker_url": redis_url,
        "queue": f"trainyard-e2e-{uuid.uuid4().hex[:8]}",
        "heartbeat_seconds": "1",
        "host_timeout_seconds": "8",  # a SIGKILLed host is declared lost this soon
    }
    api_env = service_env(tmp_path / "api-data", **shared)
    hosts = {
        name: service_env(tmp_path / f"{name}-data", **shared, worker_name=name)
        for name in ("w1", "w2")
    }
    token = add_user(api_env, "operator", admin=True)
    logs = tmp_path / "logs"
    with (
        processes([["api", "--port", str(port)]], api_env, logs / "api"),
        processes([["worker"]], hosts["w1"], logs / "w1") as (w1,),
        processes([["worker"]], hosts["w2"], logs / "w2") as (w2,),
        api_client(base_url, token) as client,
    ):
        wait_healthy(base_url)
        wait_for_hosts(client, {"w1", "w2"})
        # Log, plot and model through the API, though the API's folder has none of them.
        scenarios.job_succeeds_with_every_epoch_once(client)
        scenarios.uploaded_dataset_trains(client)  # the upload reaches a worker's cache
        job_id = client.post("/jobs", json={**scenarios.SMALL_JOB, "epochs": 5}).json()["id"]
        running = wait_for(client, job_id, lambda j: (j["current_epoch"] or 0) >= 2, 240)
        lost = {"w1": w1, "w2": w2}[running["host"]]
        os.killpg(lost.pid, signal.SIGKILL)  # the worker and its trainer, as a power cut
        done = wait_for(client, job_id, lambda j: j["status"] in TERMINAL, timeout=300)
        assert done["status"] == "succeeded", done
        assert done["host"] != running["host"] and done["attempt"] == 2
        epochs = [m["epoch"] for m in client.get(f"/jobs/{job_id}/metrics").json()]
        assert epochs == [1, 2, 3, 4, 5]
        assert client.get(f"/jobs/{job_id}/model").status_code == 200
        log = client.get(f"/jobs/{job_id}/logs").text
        assert f"attempt 1 on {running['host']}" in log and f"attempt 2 on {done['host']}" in log
    assert not (tmp_path / "api-data" / "trainyard.db").exists()  # all went to PostgreSQL
    assert not any((tmp_path / "api-data" / "jobs").iterdir())  # and no job file to the API
