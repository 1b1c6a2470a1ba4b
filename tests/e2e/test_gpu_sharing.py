"""Sharing one box: `trainyard up` advertising 4 simulated GPUs, real trainings.

The issue's scenario: A (2 GPUs), B (2), C (4), D (1) submitted in that order by one
user. A and B run together; C starts only after both end; D not before C; no GPU is ever
held by two jobs at once; each trainer ran as many replicas as it had GPUs leased.
"""

from __future__ import annotations

import itertools
import sqlite3
from datetime import datetime
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


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_four_simulated_gpus_shared_fairly(data_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(
        data_dir, simulated_gpus="4", worker_name="lab1", max_active_jobs_per_user="4"
    )
    with processes([["up", "--port", str(port)]], env, tmp_path / "logs"):
        wait_healthy(base_url)
        alice = api_client(base_url, add_user(env, "alice"))
        bob = api_client(base_url, add_user(env, "bob"))
        wait_for_hosts(alice, {"lab1"})

        too_big = alice.post("/jobs", json={**ONE_EPOCH_JOB, "gpus": 5})
        assert too_big.status_code == 422
        assert "the largest host lab1 has 4" in too_big.text

        ids = {}
        for name, gpus in (("A", 2), ("B", 2), ("C", 4), ("D", 1)):
            response = alice.post("/jobs", json={**ONE_EPOCH_JOB, "gpus": gpus, "name": name})
            assert response.status_code == 201, response.text
            ids[name] = response.json()["id"]

        over = alice.post("/jobs", json={**ONE_EPOCH_JOB, "gpus": 1})
        assert over.status_code == 429
        assert "limit" in over.json()["detail"]

        running = wait_for(alice, ids["A"], lambda j: j["status"] == "running", timeout=60)
        assert running["gpu_indices"] and running["host"] == "lab1"
        assert bob.post(f"/jobs/{ids['A']}/cancel").status_code == 403
        waiting = alice.get(f"/jobs/{ids['C']}").json()
        if waiting["status"] == "queued":
            assert waiting["queue_position"] == 1
            assert "needs 4 GPUs on one host; host lab1 has" in waiting["waiting_reason"]
        gpus = bob.get("/gpus").json()
        assert [host["name"] for host in gpus] == ["lab1"]
        assert gpus[0]["simulated"] is True and len(gpus[0]["gpus"]) == 4

        jobs = {
            name: wait_for(alice, job_id, lambda j: j["status"] in TERMINAL, timeout=300)
            for name, job_id in ids.items()
        }
        for name, job in jobs.items():
            assert job["status"] == "succeeded", (name, job)

    a, b, c, d = (jobs[name] for name in "ABCD")
    # A and B overlapped in time; C waited for both; D did not overtake C.
    assert when(a["started_at"]) < when(b["finished_at"])
    assert when(b["started_at"]) < when(a["finished_at"])
    assert when(c["started_at"]) >= max(when(a["finished_at"]), when(b["finished_at"]))
    assert when(d["started_at"]) >= when(c["started_at"])
    for job in jobs.values():
        assert job["replicas"] == job["spec"]["gpus"]

    assert_no_gpu_held_twice(data_dir / "trainyard.db", len(ids))


def assert_no_gpu_held_twice(database: Path, jobs: int) -> None:
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT job_id, gpu_index, leased_at, released_at FROM gpu_leases"
        ).fetchall()
        replicas = connection.execute(
            "SELECT jobs.id, json_extract(jobs.spec, '$.gpus'), epochs.replicas "
            "FROM jobs JOIN epochs ON epochs.job_id = jobs.id"
        ).fetchall()
    assert len({row[0] for row in rows}) == jobs
    assert all(row[3] is not None for row in rows), "every lease ended"
    by_gpu: dict[int, list[tuple[str, str]]] = {}
    for _, index, start, end in rows:
        by_gpu.setdefault(index, []).append((start, end))
    for index, spans in by_gpu.items():
        spans.sort()
        for (_, earlier_end), (later_start, _) in itertools.pairwise(spans):
            assert earlier_end <= later_start, f"GPU {index} held twice: {spans}"
    # Each trainer's replica count (reported per epoch) equals its leased GPU count.
    assert all(gpus == reported for _, gpus, reported in replicas)
