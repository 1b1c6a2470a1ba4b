"""The data directory's disk fills up under a running job: `trainyard up` on a 64 MB tmpfs
(its embedded database, broker and job folders all on it). The disk is filled while the
trainer trains an epoch; its next checkpoint (9 MiB, bigger than the worker's 8 MiB reserve,
as a real model's is) cannot be written: the job ends `failed`, `disk_full`, naming the file
and the bytes free, within 30 s, the reserve having been freed so that the embedded database
could record it. /healthz answers 503 naming the data directory while the disk is full, 200
once there is room again; the reserve is put back and the next job succeeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.disk import reserve_path
from tests.chaos.harness import (
    chaos_env,
    check_invariants,
    database,
    healthz,
    service,
    token_of,
    wait_until,
)
from tests.e2e.service import api_client, free_port, wait_healthy
from tests.full_disk import fill, small_tmpfs

pytestmark = pytest.mark.chaos

CHECKPOINT_BYTES = 9 * 1024 * 1024


def test_a_full_disk_fails_the_running_job_and_the_service_recovers(tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with (
        small_tmpfs(tmp_path / "disk", size="64m") as data_dir,
        service(tmp_path / "logs", [data_dir]) as running,
    ):
        steps = ["started", f"resume:1.5:{CHECKPOINT_BYTES}", "finished"]
        env = chaos_env(data_dir, steps, simulated_gpus="1")
        running.start("up", ["up", "--port", str(port)], env)
        wait_healthy(base_url)
        ballast = data_dir / "ballast-folders"
        for name in ("first", "second"):  # made now: later there is no room for a folder
            (ballast / name).mkdir(parents=True)
        with (
            database(f"sqlite:///{data_dir / 'trainyard.db'}") as db,
            api_client(base_url, token_of(data_dir)) as client,
        ):
            wait_until(reserve_path(data_dir).exists, 60, "the worker's disk reserve")
            spec = {"dataset": "synthetic", "epochs": 100, "gpus": 1}
            doomed = client.post("/jobs", json=spec).json()["id"]
            wait_until(
                lambda: db.epochs(doomed),
                30,
                lambda: f"job {doomed}'s first epoch: {db.statuses()}\n{running.logs()}",
            )
            fill(ballast / "first")  # while the trainer trains its next epoch
            wait_until(
                lambda: db.all_ended([doomed]),
                30,
                lambda: f"job {doomed} to fail: {db.statuses()}\n{running.logs()}",
            )
            failed = db.job(doomed)
            assert (failed.status, failed.failure_reason) == ("failed", "disk_full"), (
                failed.failure_message
            )
            message = failed.failure_message or ""
            assert "no space left" in message and "bytes free" in message, message
            assert str(data_dir / "jobs" / str(doomed) / "checkpoints") in message, message
            assert not reserve_path(data_dir).exists()  # freed to record the failure

            # The ended job's checkpoints go; fill what that and the reserve gave back.
            checkpoints = data_dir / "jobs" / str(doomed) / "checkpoints"
            wait_until(lambda: not checkpoints.exists(), 10, "the failed job's checkpoints to go")
            fill(ballast / "second")
            for _ in range(3):  # and it stays so while the disk is full
                code, body = healthz(base_url)
                assert code == 503, (code, body)
                assert body["database"] == "ok", body
                assert str(data_dir) in body["data_dir"], body
                assert "No space left" in body["data_dir"], body

            for folder in ("first", "second"):
                (ballast / folder / "ballast").unlink()
            wait_until(lambda: healthz(base_url)[0] == 200, 10, "/healthz to recover")
            wait_until(reserve_path(data_dir).exists, 10, "the reserve to be put back")
            fine = client.post("/jobs", json={**spec, "epochs": 1}).json()["id"]
            wait_until(
                lambda: db.all_ended([fine]),
                30,
                lambda: f"job {fine} to end: {db.statuses()}\n{running.logs()}",
            )
            check_invariants(db, {doomed: "failed", fine: "succeeded"}, [data_dir], client)
