"""PostgreSQL away for 20 seconds under a running job: the API and a worker reach it through
a TCP proxy that the test cuts (every connection closed, new ones refused) and restores.

What the README promises: /healthz says 503 naming the database while it is away; a
supervisor that cannot reach the database stops its trainer within half a host timeout (and
a quarter more of grace); once the database is back, the reconciler requeues the silent run
without counting it as lost (its host kept heartbeating), and the job resumes from its
checkpoint and succeeds, each epoch recorded once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.chaos.harness import (
    FAST,
    chaos_env,
    check_invariants,
    database,
    healthz,
    postgres_target,
    service,
    tcp_proxy,
    trainers,
    wait_until,
)
from tests.e2e.service import add_user, api_client, free_port, wait_for_hosts, wait_healthy

pytestmark = pytest.mark.chaos

EPOCHS = 5
OUTAGE_SECONDS = 20


def test_a_database_outage_stops_the_run_and_the_job_resumes(
    tmp_path: Path, postgres_url: str
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    host = f"chaos-{uuid.uuid4().hex[:6]}"
    steps = ["started", "resume:1", "finished"]
    api_dir, worker_dir = tmp_path / "api-data", tmp_path / "worker-data"
    host_timeout = float(FAST["host_timeout_seconds"])
    with (
        tcp_proxy(postgres_target(postgres_url)) as proxy,
        service(tmp_path / "logs", [worker_dir]) as running,
        database(postgres_url) as db,  # the test's own reads go around the proxy
    ):
        proxied = {"database_url": proxy.url(postgres_url)}
        api_env = chaos_env(api_dir, steps, **proxied)
        worker_env = chaos_env(worker_dir, steps, **proxied, worker_name=host, simulated_gpus="1")
        token = add_user(api_env, "operator", admin=True)  # migrates, through the proxy
        running.start("api", ["api", "--port", str(port)], api_env)
        running.start("worker", ["worker"], worker_env)
        wait_healthy(base_url)
        with api_client(base_url, token) as client:
            wait_for_hosts(client, {host})
            spec = {"dataset": "synthetic", "epochs": EPOCHS, "gpus": 1}
            job_id = client.post("/jobs", json=spec).json()["id"]
            wait_until(
                lambda: len(db.epochs(job_id)) >= 2,
                30,
                lambda: f"job {job_id} past epoch 2: {db.statuses()}\n{running.logs()}",
            )
            assert trainers([worker_dir])

            proxy.cut()
            cut_at = time.monotonic()
            # The API says what is wrong, without hanging.
            _, body = wait_until(
                lambda: (answer := healthz(base_url))[0] == 503 and answer,
                10,
                "/healthz to answer 503 with the database away",
            )
            assert body["database"] != "ok" and body["data_dir"] == "ok", body
            assert client.get(f"/jobs/{job_id}").status_code == 503
            # The run stops itself: half a host timeout of failed writes, then at most a
            # quarter host timeout of grace for its trainer.
            wait_until(
                lambda: not trainers([worker_dir]),
                host_timeout * 0.75 + 5,
                lambda: f"the trainer to stop with the database away\n{running.logs()}",
            )
            stopped_after = time.monotonic() - cut_at
            recorded = db.epochs(job_id)
            assert db.job(job_id).status == "running"  # nobody could say otherwise yet
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
            assert not trainers([worker_dir])
            assert db.epochs(job_id) == recorded  # nothing was written meanwhile

            proxy.restore()
            wait_healthy(base_url, timeout=20)
            wait_until(
                lambda: db.all_ended([job_id]),
                40,
                lambda: f"job {job_id} to end: {db.statuses()}\n{running.logs()}",
            )
            jobs = check_invariants(db, {job_id: "succeeded"}, [worker_dir], client)
            final = db.epochs(job_id)
    job = jobs[job_id]
    # Requeued by the reconciler, not counted as lost (the host kept heartbeating once the
    # database was back), and resumed: the epochs before the outage stay the first run's,
    # the second run recorded only the rest.
    assert (job.attempt, job.lost_runs) == (2, 0), (job.attempt, job.lost_runs)
    assert len(recorded) >= 2 and set(recorded.values()) == {1}, recorded
    assert {e: a for e, a in final.items() if e in recorded} == recorded, final
    assert {a for e, a in final.items() if e not in recorded} == {2}, final
    print(f"trainer stopped {stopped_after:.1f}s after the database went away")
