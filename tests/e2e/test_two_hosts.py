"""Several hosts: two workers (lab1 with 2 simulated GPUs, lab2 with 4) share one
PostgreSQL and one Redis; each job goes to a host that fits it and runs there."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.service import (
    ONE_EPOCH_JOB,
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


def test_jobs_are_routed_to_hosts_that_fit(
    data_dir: Path, tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    shared = {
        "database_url": postgres_url,
        "broker_url": redis_url,
        "queue": f"trainyard-e2e-{uuid.uuid4().hex[:8]}",
    }
    api_env = service_env(data_dir, **shared)
    lab1 = service_env(data_dir, **shared, worker_name="lab1", simulated_gpus="2")
    lab2 = service_env(data_dir, **shared, worker_name="lab2", simulated_gpus="4")
    token = add_user(api_env, "operator", admin=True)
    logs = tmp_path / "logs"
    with (
        processes([["api", "--port", str(port)]], api_env, logs / "api"),
        processes([["worker"]], lab1, logs / "lab1"),
        processes([["worker"]], lab2, logs / "lab2"),
        api_client(base_url, token) as client,
    ):
        wait_healthy(base_url)
        wait_for_hosts(client, {"lab1", "lab2"})
        big = client.post("/jobs", json={**ONE_EPOCH_JOB, "gpus": 4}).json()["id"]
        small = client.post("/jobs", json={**ONE_EPOCH_JOB, "gpus": 2}).json()["id"]
        too_big = client.post("/jobs", json={**ONE_EPOCH_JOB, "gpus": 5})
        assert too_big.status_code == 422 and "largest host lab2 has 4" in too_big.text
        done = {
            job_id: wait_for(client, job_id, lambda j: j["status"] in TERMINAL, timeout=240)
            for job_id in (big, small)
        }
    assert done[big]["status"] == done[small]["status"] == "succeeded", done
    assert (done[big]["host"], done[big]["replicas"]) == ("lab2", 4)
    assert (done[small]["host"], done[small]["replicas"]) == ("lab1", 2)
