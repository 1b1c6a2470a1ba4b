"""The jobs API over HTTP (FastAPI's TestClient), on SQLite and on PostgreSQL.

No worker runs here: submitted jobs stay queued; run-side writes go through
app.core.lifecycle and worker.runs, the functions a real worker uses.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from app.core import hosts, lifecycle
from app.core import jobs as job_queries
from app.core.config import get_settings
from app.core.db import get_session_factory
from app.core.models import Host, Job, JobStatus
from app.main import app
from tests.conftest import bearer, place_and_claim, register_test_host
from worker import runs


@pytest.fixture
def client(tokens: dict[str, str]) -> TestClient:
    """Alice's client: a plain user. One worker host with 4 (simulated) GPUs is up."""
    register_test_host()
    return TestClient(app, headers=bearer(tokens["alice"]))


def job_count() -> int:
    with get_session_factory()() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def run_epochs(job_id: int, epochs: int) -> int:
    """Claim the job as a worker would and record `epochs` epochs; returns the attempt."""
    attempt = place_and_claim(job_id)
    with get_session_factory()() as session:
        for epoch in range(1, epochs + 1):
            event = {
                "epoch": epoch,
                "loss": 2.0 / epoch,
                "accuracy": 0.2 * epoch,
                "val_loss": 2.5 / epoch,
                "val_accuracy": 0.15 * epoch,
                "lr": 0.005 * (1 - (epoch - 1) / epochs),
                "seconds": 1.5,
                "replicas": 1,
            }
            assert runs.record_epoch(session, job_id, attempt, event)
        return attempt


def test_submit_returns_the_stored_job_with_defaults(client: TestClient) -> None:
    response = client.post("/jobs", json={"dataset": "digits", "epochs": 3, "gpus": 0})
    assert response.status_code == 201
    job = response.json()
    assert job["status"] == "queued"
    assert job["attempt"] == 0
    assert job["spec"] == {
        "name": None,
        "model": "minigooglenet",
        "init": "random",
        "dataset": "digits",
        "gpus": 0,
        "cpu_replicas": 0,
        "epochs": 3,
        "lr": 0.005,
        "batch_size": 64,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": None,
        "label_smoothing": 0.0,
        "bn_momentum": "auto",
        "augment": "shift_flip",
        "lr_power": 1.0,
        "lr_scaling": "none",
        "mixed_precision": "auto",
        "priority": 0,
        "keep_checkpoints": False,
        "seed": None,
    }
    assert datetime.fromisoformat(job["created_at"]).tzinfo is not None
    assert client.get(f"/jobs/{job['id']}").json() == job
    assert job_count() == 1


def test_idempotency_key_makes_a_retried_submission_safe(
    client: TestClient, tokens: dict[str, str]
) -> None:
    spec = {"dataset": "digits", "epochs": 3, "gpus": 0}
    first = client.post("/jobs", json=spec, headers={"Idempotency-Key": "run-42"})
    again = client.post("/jobs", json=spec, headers={"Idempotency-Key": "run-42"})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert job_count() == 1
    changed = client.post(
        "/jobs", json={**spec, "epochs": 4}, headers={"Idempotency-Key": "run-42"}
    )
    assert changed.status_code == 422
    assert changed.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    # Keys are per user: bob's "run-42" is his own job.
    bobs = client.post(
        "/jobs",
        json=spec,
        headers={"Idempotency-Key": "run-42", **bearer(tokens["bob"])},
    )
    assert bobs.status_code == 201 and bobs.json()["id"] != first.json()["id"]
    assert client.post("/jobs", json=spec).json()["id"] not in {first.json()["id"]}
    assert job_count() == 3
    too_long = client.post("/jobs", json=spec, headers={"Idempotency-Key": "k" * 201})
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_a_key_whose_first_job_commits_during_the_request_replays_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A retry that checks its key just before the first request commits finds nothing,
    # then fails on the key's unique constraint when it inserts: it answers as a replay.
    spec = {"dataset": "digits", "epochs": 3, "gpus": 0}
    first = client.post("/jobs", json=spec, headers={"Idempotency-Key": "race"}).json()
    monkeypatch.setattr(job_queries, "job_for_key", lambda *_args: None)
    again = client.post("/jobs", json=spec, headers={"Idempotency-Key": "race"})
    assert again.status_code == 201, again.text
    assert again.json()["id"] == first["id"] and again.json()["owner"] == "alice"
    assert again.headers["idempotent-replayed"] == "true"
    changed = client.post("/jobs", json={**spec, "epochs": 4}, headers={"Idempotency-Key": "race"})
    assert changed.status_code == 422
    assert changed.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    assert job_count() == 1


def test_seed_defaults_apply_to_an_empty_spec(client: TestClient) -> None:
    spec = client.post("/jobs", json={}).json()["spec"]
    assert (spec["gpus"], spec["epochs"], spec["lr"], spec["batch_size"]) == (1, 70, 0.005, 64)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1001}, "epochs"),
        ({"gpus": -1}, "gpus"),
        ({"gpus": True}, "gpus"),
        ({"lr": "fast"}, "lr"),
        ({"lr": 0}, "lr"),
        ({"lr": 10.5}, "lr"),
        ({"lr": 11}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 4097}, "batch_size"),
        ({"momentum": 1.5}, "momentum"),
        ({"bn_momentum": 1.0}, "bn_momentum"),
        ({"dataset": "imagenet"}, "dataset"),
        # A path is for the standalone trainer only: a request never names a server file.
        ({"dataset": "/srv/other-lab/secret.npz"}, "dataset"),
        ({"bn_momentum": "fast"}, "bn_momentum"),
        ({"model": "resnet"}, "model"),
        ({"epochs": "3"}, "epochs"),
        ({"foo": 1}, "foo"),
        ({"augment": "yes"}, "augment"),
        ({"lr_scaling": "sqrt"}, "lr_scaling"),
        ({"mixed_precision": "int8"}, "mixed_precision"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_spec_is_422_naming_the_field_and_stores_nothing(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/jobs", json=body)
    assert response.status_code == 422
    # Every error names the field (a union such as `dataset` reports one per alternative).
    assert {tuple(error["loc"][:2]) for error in response.json()["detail"]} == {("body", field)}
    assert job_count() == 0


def test_cpu_replicas_with_gpus_is_422(client: TestClient) -> None:
    response = client.post("/jobs", json={"gpus": 1, "cpu_replicas": 2})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "cpu_replicas"]
    assert "cpu_replicas needs gpus = 0" in error["msg"]
    assert job_count() == 0


def test_more_gpus_than_the_largest_live_host_is_422_naming_it(client: TestClient) -> None:
    """Hosts whose worker went silent do not count: their GPUs may never come back."""
    register_test_host("big-but-gone", gpus=8)
    register_test_host("small", gpus=2)
    with get_session_factory()() as session:
        session.execute(
            update(Host)
            .where(Host.name == "big-but-gone")
            .values(last_heartbeat=datetime(2020, 1, 1, tzinfo=UTC))
        )
        session.commit()
    before = job_count()
    too_big = client.post("/jobs", json={"gpus": 5})
    assert too_big.status_code == 422, too_big.text
    assert too_big.json()["detail"][0]["loc"] == ["body", "gpus"]
    assert "needs 5 GPUs on one host; the largest host test-host has 4" in too_big.text
    assert job_count() == before
    assert client.post("/jobs", json={"gpus": 4}).status_code == 201
    # A tie is named as the scheduler names it: the greater name by code point, whatever
    # the database's collation (one that skips punctuation would put "lab-2" last).
    register_test_host("lab-2", gpus=6)
    register_test_host("lab1", gpus=6)
    assert "the largest host lab1 has 6" in client.post("/jobs", json={"gpus": 7}).text


def reads_hosts(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> Callable[[dict[str, Any], int], bool]:
    """Submits a spec, asserts the status code, and tells whether the hosts were read."""

    def submitted(spec: dict[str, Any], status: int) -> bool:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
            response = client.post("/jobs", json=spec)
        assert response.status_code == status, response.text
        return any("FROM hosts" in record.getMessage() for record in caplog.records)

    return submitted


def test_a_burst_of_gpu_jobs_reads_the_hosts_once_a_second(
    client: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts_read = reads_hosts(client, caplog)
    monkeypatch.setattr(hosts, "ENOUGH_REMEMBERED_SECONDS", 60.0)  # "a second", on a slow box
    assert hosts_read({"gpus": 2}, 201)
    # Within the second: a job the largest host (4 GPUs) can run is let in without a read.
    assert not hosts_read({"gpus": 4}, 201) and not hosts_read({"gpus": 1}, 201)
    assert hosts_read({"gpus": 5}, 422)  # a refusal is always read afresh
    register_test_host("bigger", gpus=8)
    assert hosts_read({"gpus": 5}, 201)
    monkeypatch.setattr(hosts, "ENOUGH_REMEMBERED_SECONDS", 0.0)
    assert hosts_read({"gpus": 1}, 201)  # a second later: read again


def test_with_no_live_host_yet_gpu_jobs_wait_and_the_answer_is_remembered(
    tokens: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts_read = reads_hosts(TestClient(app, headers=bearer(tokens["alice"])), caplog)
    monkeypatch.setattr(hosts, "ENOUGH_REMEMBERED_SECONDS", 60.0)
    assert hosts_read({"gpus": 2}, 201)  # queued: a host may join
    assert not hosts_read({"gpus": 64}, 201)  # within the second: no read
    register_test_host(gpus=4)
    monkeypatch.setattr(hosts, "ENOUGH_REMEMBERED_SECONDS", 0.0)
    assert hosts_read({"gpus": 64}, 422)  # read again: now a host says it can never run


def test_a_placed_job_shows_its_host_and_gpus(client: TestClient) -> None:
    from worker.scheduler import schedule

    job_id = client.post("/jobs", json={"gpus": 2}).json()["id"]
    assert client.get(f"/jobs/{job_id}").json()["queue_position"] == 1
    with get_session_factory()() as session:
        schedule(session, get_settings())
    job = client.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["host"], job["gpu_indices"]) == ("placed", "test-host", [0, 1])
    assert job["queue_position"] is None and job["waiting_reason"] is None
    listed = client.get("/jobs", params={"status": "placed"}).json()["items"]
    assert [j["id"] for j in listed] == [job_id]
    assert client.get("/jobs", params={"status": "queued"}).json()["total"] == 0
    # Cancelled before its worker claimed it: at once, and its GPUs are free again.
    cancelled = client.post(f"/jobs/{job_id}/cancel").json()
    assert (cancelled["status"], cancelled["gpu_indices"]) == ("cancelled", [])
    with get_session_factory()() as session:
        assert lifecycle.claim(session, job_id, "test-host") is None


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"epochs": 3'])
def test_body_that_is_not_a_json_object_is_422(client: TestClient, body: bytes) -> None:
    response = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"
    assert job_count() == 0


def test_unknown_job_is_404(client: TestClient) -> None:
    for path in ("/jobs/99", "/jobs/99/metrics", "/jobs/99/plot.png", "/jobs/99/logs"):
        assert client.get(path).status_code == 404, path
    assert client.post("/jobs/99/cancel").status_code == 404


def test_ids_beyond_64_bits_are_422_not_500(client: TestClient) -> None:
    huge = 2**64
    assert client.get(f"/jobs/{huge}").status_code == 422
    assert client.post(f"/jobs/{huge}/cancel").status_code == 422
    assert client.get("/jobs", params={"offset": huge}).status_code == 422
    response = client.post("/jobs", json={"dataset": huge})
    assert response.status_code == 422
    assert {tuple(e["loc"][:2]) for e in response.json()["detail"]} == {("body", "dataset")}
    assert client.get(f"/datasets/{huge}").status_code == 422
    assert job_count() == 0


def test_list_is_newest_first_filtered_and_paginated(client: TestClient) -> None:
    ids = [client.post("/jobs", json={"name": f"j{i}"}).json()["id"] for i in range(5)]
    client.post(f"/jobs/{ids[1]}/cancel")
    page = client.get("/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in page["items"]] == [ids[4], ids[3]]
    assert page["total"] == 5
    second = client.get("/jobs", params={"limit": 2, "offset": 2}).json()
    assert [job["id"] for job in second["items"]] == [ids[2], ids[1]]
    cancelled = client.get("/jobs", params={"status": "cancelled"}).json()
    assert [job["id"] for job in cancelled["items"]] == [ids[1]]
    bad = client.get("/jobs", params={"status": "done"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "status"]
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_metrics_json_csv_and_job_progress(client: TestClient) -> None:
    job_id = client.post("/jobs", json={"dataset": "synthetic", "epochs": 3}).json()["id"]
    attempt = run_epochs(job_id, 3)
    metrics = client.get(f"/jobs/{job_id}/metrics").json()
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[1]["loss"] == pytest.approx(1.0)
    assert all(m["attempt"] == attempt for m in metrics)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "running"
    assert job["current_epoch"] == 3
    assert job["last_metrics"]["val_accuracy"] == pytest.approx(0.45)
    response = client.get(f"/jobs/{job_id}/metrics", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert set(rows[0]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    assert client.get(f"/jobs/{job_id}/metrics", params={"format": "xml"}).status_code == 422


def test_plot_is_a_png_before_and_during_a_run(client: TestClient) -> None:
    job_id = client.post("/jobs", json={"dataset": "digits"}).json()["id"]
    empty = client.get(f"/jobs/{job_id}/plot.png")
    assert empty.status_code == 200
    assert empty.headers["content-type"] == "image/png"
    assert empty.content.startswith(b"\x89PNG\r\n\x1a\n")
    run_epochs(job_id, 2)
    drawn = client.get(f"/jobs/{job_id}/plot.png")
    assert drawn.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert drawn.content != empty.content


def test_cancel_queued_job_is_immediate_and_final(client: TestClient) -> None:
    job_id = client.post("/jobs", json={}).json()["id"]
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "cancelled"
    assert job["failure_reason"] == "cancelled"
    assert job["finished_at"] is not None
    # A worker that receives the job afterwards must not run it.
    with get_session_factory()() as session:
        assert lifecycle.claim(session, job_id, "late-worker") is None
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200  # idempotent


def test_cancel_running_job_flags_it_for_its_supervisor(client: TestClient) -> None:
    job_id = client.post("/jobs", json={}).json()["id"]
    attempt = run_epochs(job_id, 1)
    job = client.post(f"/jobs/{job_id}/cancel").json()
    assert job["status"] == "running"
    assert job["cancel_requested"] is True
    with get_session_factory()() as session:
        assert runs.heartbeat(session, job_id, attempt) == (True, True)


def test_cancel_of_a_finished_job_is_409(client: TestClient) -> None:
    job_id = client.post("/jobs", json={}).json()["id"]
    attempt = run_epochs(job_id, 1)
    with get_session_factory()() as session:
        assert lifecycle.finish(session, job_id, attempt, JobStatus.succeeded)
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 409
    assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"


def test_logs_and_model(client: TestClient, db: Path) -> None:
    job_id = client.post("/jobs", json={}).json()["id"]
    assert client.get(f"/jobs/{job_id}/logs").text == ""
    assert client.get(f"/jobs/{job_id}/model").status_code == 409
    mean = client.get(f"/jobs/{job_id}/mean_image.npy")
    assert mean.status_code == 409 and "no mean image: queued" in mean.text
    folder = db / "jobs" / str(job_id)
    folder.mkdir(parents=True)
    (folder / "train.log").write_text("".join(f"line {i}\n" for i in range(10)))
    assert client.get(f"/jobs/{job_id}/logs", params={"tail": 2}).text == "line 8\nline 9\n"


def test_healthz_and_openapi_describe_every_route(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    paths = client.get("/openapi.json").json()["paths"]
    for path, methods in paths.items():
        for method, operation in methods.items():
            # FastAPI makes a summary from every function name; the description is our docstring.
            assert operation.get("description"), (path, method)
    assert "/jobs/{job_id}/plot.png" in paths
