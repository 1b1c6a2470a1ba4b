"""The API process stopped (SIGTERM) and killed (SIGKILL) and started again while a script
keeps submitting and jobs run: the worker goes on without it, and every job a 201 accepted,
or that a retry with the same Idempotency-Key found, ends succeeded, once. The API and the
worker are separate processes on the embedded database (as `trainyard up` runs them)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.chaos.harness import (
    chaos_env,
    check_invariants,
    database,
    service,
    wait_until,
)
from tests.e2e.service import add_user, api_client, free_port, wait_for_hosts, wait_healthy

pytestmark = pytest.mark.chaos

JOBS = 12
SPEC = {"dataset": "synthetic", "epochs": 3, "gpus": 1}


class Submitter(threading.Thread):
    """A script submitting JOBS jobs, one every 0.3 s, each with an Idempotency-Key of its
    own that it retries (a connection error, a 5xx) until the API answers."""

    def __init__(self, client: httpx.Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.accepted: dict[str, int] = {}  # key -> job id
        self.replayed: list[str] = []
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for number in range(JOBS):
                key = f"chaos-{number}"
                self.accepted[key] = self.submit(key)
                time.sleep(0.3)
        except BaseException as error:  # reported by the test
            self.error = error

    def submit(self, key: str) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = self.client.post(
                    "/jobs", json=SPEC, headers={"Idempotency-Key": key}, timeout=5
                )
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code in (200, 201):
                if response.headers.get("Idempotent-Replayed") == "true":
                    self.replayed.append(key)
                return int(response.json()["id"])
            assert response is None or response.status_code >= 500, response.text
            self.retries += 1
            time.sleep(0.2)
        raise AssertionError(f"job {key} was never accepted")


def test_api_restarts_lose_no_job(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    host = "chaos-api"
    steps = ["started", "resume:0.5", "finished"]
    env = chaos_env(data_dir, steps, simulated_gpus="2", worker_name=host)
    token = add_user(env, "operator", admin=True)
    api = ["api", "--port", str(port)]
    with (
        service(tmp_path / "logs", [data_dir]) as running,
        database(f"sqlite:///{data_dir / 'trainyard.db'}") as db,
        api_client(base_url, token) as client,
    ):
        running.start("api-1", api, env)
        running.start("worker", ["worker"], env)
        wait_healthy(base_url)
        wait_for_hosts(client, {host})
        submitter = Submitter(client)
        submitter.start()

        def epochs_recorded() -> int:
            return sum(len(db.epochs(job_id)) for job_id in db.jobs())

        def api_down_while_jobs_run(name: str, signum: int, restart: str) -> None:
            wait_until(lambda: db.statuses() and epochs_recorded() > 0, 30, "a job to train")
            status = running.signal(name, signum)
            # uvicorn shuts down cleanly on SIGTERM, then ends by the signal it got.
            assert status == -signum, status
            if signum == signal.SIGTERM:
                assert "Application shutdown complete" in running.log(name)
            before = epochs_recorded()
            # The worker needs no API: its jobs go on training meanwhile.
            wait_until(
                lambda: epochs_recorded() > before,
                20,
                lambda: f"epochs while the API is down: {db.statuses()}\n{running.logs()}",
            )
            running.start(restart, api, env)

        wait_until(lambda: len(submitter.accepted) >= 3, 30, "three jobs accepted")
        api_down_while_jobs_run("api-1", signal.SIGTERM, "api-2")
        wait_healthy(base_url)
        wait_until(lambda: len(submitter.accepted) >= 7, 40, "seven jobs accepted")
        api_down_while_jobs_run("api-2", signal.SIGKILL, "api-3")
        wait_healthy(base_url)
        submitter.join(timeout=60)
        assert submitter.error is None, submitter.error
        assert len(submitter.accepted) == JOBS
        ids = sorted(submitter.accepted.values())
        assert len(set(ids)) == JOBS, submitter.accepted  # one job per key, no duplicate
        wait_until(
            lambda: db.all_ended(ids),
            50,
            lambda: f"every job to end: {db.statuses()}\n{running.logs()}",
        )
        # Exactly the accepted jobs exist (none lost, none created twice by a retry). Read
        # over a new connection: the submitter's may have idled into the server's keep-alive
        # timeout, and a request sent as the server closes it gets no answer.
        with api_client(base_url, token) as reader:
            jobs = check_invariants(db, {i: "succeeded" for i in ids}, [data_dir], reader)
    keys = {job.idempotency_key: job.id for job in jobs.values()}
    assert keys == submitter.accepted
    assert submitter.retries > 0  # the script did meet the API down
    print(f"retries {submitter.retries}, replayed {submitter.replayed}")
