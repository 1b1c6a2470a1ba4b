"""A cancel storm: ten jobs, six running and four queued, cancelled by ten requests at once.
The trainers are stuck ones (they ignore SIGTERM and have started a child that ignores it
too), so every running cancel takes the whole path: SIGTERM to the process group, SIGKILL
after the grace, the job marked only once its group is gone. All end cancelled within
seconds; no trainer process, no child of one, and no lease is left; a queued job never
started."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.chaos.harness import (
    FAST,
    chaos_env,
    check_invariants,
    database,
    live_in_groups,
    service,
    token_of,
    trainers,
    wait_until,
)
from tests.e2e.service import api_client, free_port, wait_healthy

pytestmark = pytest.mark.chaos


def test_ten_jobs_cancelled_at_once_all_end_with_nothing_left(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    steps = ["started", "ignore-term", "child", "resume:0.5", "finished"]
    env = chaos_env(data_dir, steps, simulated_gpus="4", cpu_job_slots="2")
    with (
        service(tmp_path / "logs", [data_dir]) as running,
        database(f"sqlite:///{data_dir / 'trainyard.db'}") as db,
    ):
        running.start("up", ["up", "--port", str(port)], env)
        wait_healthy(base_url)
        with api_client(base_url, token_of(data_dir)) as client:
            gpus = [1] * 7 + [0] * 3  # 4 GPU jobs and 2 CPU jobs run, 4 wait
            ids = [
                client.post(
                    "/jobs", json={"dataset": "synthetic", "epochs": 500, "gpus": g}
                ).json()["id"]
                for g in gpus
            ]
            wait_until(
                lambda: sum(bool(db.epochs(i)) for i in ids) == 6,
                40,
                lambda: f"six jobs training: {db.statuses()}\n{running.logs()}",
            )
            statuses = db.statuses()
            assert sorted(statuses.values()) == ["queued"] * 4 + ["running"] * 6, statuses
            groups = {p.pgid for p in trainers([data_dir])}
            assert len(groups) == 6 and len(live_in_groups(groups)) == 12  # trainers + children

            started = time.monotonic()
            with ThreadPoolExecutor(len(ids)) as pool:
                answers = list(pool.map(lambda i: client.post(f"/jobs/{i}/cancel"), ids))
            assert [a.status_code for a in answers] == [200] * len(ids), [a.text for a in answers]
            grace = float(FAST["cancel_grace_seconds"])
            wait_until(
                lambda: db.all_ended(ids),
                grace + 30,
                lambda: f"every job cancelled: {db.statuses()}\n{running.logs()}",
            )
            took = time.monotonic() - started
            # Nothing of any trainer is left once its job is marked (the lease was released
            # only after its group was gone).
            assert live_in_groups(groups) == []
            jobs = check_invariants(db, {i: "cancelled" for i in ids}, [data_dir], client)
            time.sleep(1)  # a few scheduling passes: nothing cancelled is placed again
            assert db.statuses() == {i: "cancelled" for i in ids}
            assert trainers([data_dir]) == [] and db.active_leases() == []
    assert all(job.failure_reason == "cancelled" for job in jobs.values())
    was_queued = [i for i in ids if statuses[i] == "queued"]
    assert all(jobs[i].attempt == 0 for i in was_queued), {i: jobs[i].attempt for i in ids}
    print(f"all {len(ids)} cancelled {took:.1f}s after the storm")
