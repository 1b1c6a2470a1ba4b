"""Retention and deletion on a shared box: ended jobs and unused datasets can be deleted by
their owner or an admin, datasets are private unless shared, uploads count against a
per-user storage quota, and `trainyard gc` removes old ended jobs. Both backends."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from typer.testing import CliRunner

from app.cli import cli
from app.core import lifecycle
from app.core.artifacts import artifact_store
from app.core.config import get_settings
from app.core.datasets import InUse, delete_dataset
from app.core.db import get_session_factory
from app.core.models import Dataset, Epoch, FailureReason, GpuLease, Job, JobStatus, User
from app.core.spec import JobSpec
from app.main import app
from tests.app.test_datasets_api import good_arrays, npz_bytes, upload
from tests.conftest import bearer, place_and_claim, register_test_host


@pytest.fixture
def clients(tokens: dict[str, str]) -> dict[str, TestClient]:
    """alice and bob (users) and root (an admin)."""
    return {name: TestClient(app, headers=bearer(token)) for name, token in tokens.items()}


def ended_job(client: TestClient, **spec: Any) -> int:
    """A job that ran one epoch (so it has a lease and an epoch row), then was cancelled."""
    job_id: int = client.post("/jobs", json={"gpus": 1, **spec}).json()["id"]
    register_test_host()
    attempt = place_and_claim(job_id)
    with get_session_factory()() as session:
        session.add(Epoch(job_id=job_id, epoch=1, attempt=attempt, loss=1.0))
        session.commit()
        assert lifecycle.finish(
            session, job_id, attempt, JobStatus.cancelled, FailureReason.cancelled, "by test"
        )
    log = get_settings().job_dir(job_id) / "train.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("epoch 1\n")
    return job_id


def rows_of(job_id: int) -> dict[str, int]:
    with get_session_factory()() as session:
        return {
            model.__name__: len(
                session.scalars(select(model).where(model.job_id == job_id)).all()  # type: ignore[attr-defined]
            )
            for model in (Epoch, GpuLease)
        } | {"Job": int(session.get(Job, job_id) is not None)}


def test_an_ended_job_is_deleted_with_its_rows_and_files(clients: dict[str, TestClient]) -> None:
    alice = clients["alice"]
    job_id = ended_job(alice)
    assert rows_of(job_id) == {"Epoch": 1, "GpuLease": 1, "Job": 1}
    assert clients["bob"].delete(f"/jobs/{job_id}").status_code == 403
    assert alice.delete(f"/jobs/{job_id}").status_code == 204
    assert rows_of(job_id) == {"Epoch": 0, "GpuLease": 0, "Job": 0}
    assert not get_settings().job_dir(job_id).exists()
    assert alice.get(f"/jobs/{job_id}").status_code == 404
    assert alice.delete(f"/jobs/{job_id}").status_code == 404


def test_an_active_job_is_not_deleted(clients: dict[str, TestClient]) -> None:
    job = clients["alice"].post("/jobs", json={"gpus": 0}).json()
    refused = clients["root"].delete(f"/jobs/{job['id']}")
    assert refused.status_code == 409
    assert "queued" in refused.json()["detail"] and "cancel" in refused.json()["detail"]
    assert clients["alice"].get(f"/jobs/{job['id']}").json()["status"] == "queued"
    assert clients["alice"].post(f"/jobs/{job['id']}/cancel").status_code == 200
    assert clients["root"].delete(f"/jobs/{job['id']}").status_code == 204  # an admin may


def test_a_deleted_jobs_id_is_never_given_again(clients: dict[str, TestClient]) -> None:
    # SQLite reuses max(id) + 1 unless the table is AUTOINCREMENT: a new job would then
    # take the deleted one's id, and any of its files left on a worker host.
    alice = clients["alice"]
    first = alice.post("/jobs", json={"gpus": 0}).json()["id"]
    alice.post(f"/jobs/{first}/cancel")
    assert alice.delete(f"/jobs/{first}").status_code == 204
    assert alice.post("/jobs", json={"gpus": 0}).json()["id"] > first


def stored_datasets() -> list[str]:
    """SHA-256 of each dataset file in the artifact store."""
    keys = artifact_store(get_settings()).keys("datasets/")
    return [key.removeprefix("datasets/").removesuffix(".npz") for key in keys]


def dataset(client: TestClient, public: bool = False) -> dict[str, Any]:
    response = client.post(
        "/datasets",
        files={"file": ("mine.npz", npz_bytes(good_arrays()), "application/octet-stream")},
        data={"public": "true" if public else "false"},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_private_dataset_is_seen_and_used_by_its_owner_and_admins_only(
    clients: dict[str, TestClient],
) -> None:
    alice, bob, root = clients["alice"], clients["bob"], clients["root"]
    mine = dataset(alice)
    assert (mine["owner"], mine["public"]) == ("alice", False)
    assert bob.get("/datasets").json() == []
    assert bob.get(f"/datasets/{mine['id']}").status_code == 404
    refused = bob.post("/jobs", json={"gpus": 0, "dataset": mine["id"]})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "dataset"]
    assert root.get(f"/datasets/{mine['id']}").status_code == 200
    assert [d["id"] for d in root.get("/datasets").json()] == [mine["id"]]
    assert alice.post("/jobs", json={"gpus": 0, "dataset": mine["id"]}).status_code == 201


def test_a_public_dataset_is_usable_by_everyone_and_deleted_only_by_its_owner(
    clients: dict[str, TestClient],
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    shared = dataset(alice, public=True)
    assert [d["id"] for d in bob.get("/datasets").json()] == [shared["id"]]
    assert bob.post("/jobs", json={"gpus": 0, "dataset": shared["id"]}).status_code == 201
    assert bob.delete(f"/datasets/{shared['id']}").status_code == 403


def test_a_dataset_in_use_is_kept_until_its_jobs_end(clients: dict[str, TestClient]) -> None:
    alice = clients["alice"]
    mine = dataset(alice)
    job = alice.post("/jobs", json={"gpus": 0, "dataset": mine["id"]}).json()
    refused = alice.delete(f"/datasets/{mine['id']}")
    assert refused.status_code == 409 and str(job["id"]) in refused.json()["detail"]
    assert stored_datasets() == [mine["sha256"]]
    assert alice.get(f"/datasets/{mine['id']}").status_code == 200
    alice.post(f"/jobs/{job['id']}/cancel")
    assert alice.delete(f"/datasets/{mine['id']}").status_code == 204
    assert stored_datasets() == []
    assert alice.get(f"/datasets/{mine['id']}").status_code == 404
    assert alice.get(f"/jobs/{job['id']}").status_code == 200  # the ended job keeps its record


def race_submission_and_deletion(owner: User, target: Dataset) -> dict[str, str]:
    """A submission naming `target` and its deletion, released at once: what each got."""
    start = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def submit() -> None:
        with get_session_factory()() as session:
            start.wait()
            try:
                lifecycle.submit(session, JobSpec(gpus=0, dataset=target.id), owner)
                outcome["submit"] = "stored"
            except lifecycle.DatasetGone:
                outcome["submit"] = "refused"

    def remove() -> None:
        with get_session_factory()() as session:
            start.wait()
            try:
                delete_dataset(session, get_settings(), target)
                outcome["delete"] = "deleted"
            except InUse:
                outcome["delete"] = "kept"

    threads = [threading.Thread(target=submit), threading.Thread(target=remove)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcome


def test_a_deletion_racing_a_submission_never_strands_a_job(tokens: dict[str, str]) -> None:
    """Either the job is stored and the dataset kept (409), or the dataset goes and the
    submission is refused: never a queued job whose dataset is gone."""
    with get_session_factory()() as session:
        alice = session.scalars(select(User).where(User.name == "alice")).one()
    for _ in range(5):
        with get_session_factory()() as session:
            row = Dataset(
                name="d", image_shape=[8, 8, 1], dtype="uint8", classes=2, train_images=4,
                test_images=2, size_bytes=1, owner_id=alice.id,
            )  # fmt: skip
            session.add(row)
            session.commit()
        outcome = race_submission_and_deletion(alice, row)
        assert outcome in (
            {"submit": "stored", "delete": "kept"},
            {"submit": "refused", "delete": "deleted"},
        )
        with get_session_factory()() as session:  # end the job, if any, for the next round
            session.execute(update(Job).values(status="cancelled"))
            session.commit()


def test_uploads_past_the_storage_quota_are_413_naming_it(
    clients: dict[str, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    size = len(npz_bytes(good_arrays()))
    monkeypatch.setenv("TRAINYARD_MAX_STORAGE_BYTES_PER_USER", str(int(size * 1.5)))
    get_settings.cache_clear()
    alice, bob = clients["alice"], clients["bob"]
    first = dataset(alice)
    refused = upload(alice, npz_bytes(good_arrays()))
    assert refused.status_code == 413
    assert "TRAINYARD_MAX_STORAGE_BYTES_PER_USER" in refused.json()["detail"][0]["msg"]
    assert [d["id"] for d in alice.get("/datasets").json()] == [first["id"]]
    assert stored_datasets() == [first["sha256"]]
    assert list(get_settings().dataset_path(0).parent.iterdir()) == []  # nothing staged left
    dataset(bob)  # a quota per user: bob's space is his own
    assert alice.delete(f"/datasets/{first['id']}").status_code == 204
    dataset(alice)  # deleting made room


def test_gc_deletes_only_jobs_that_ended_long_enough_ago(
    clients: dict[str, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = clients["alice"]
    old, recent = ended_job(alice), ended_job(alice)
    active = alice.post("/jobs", json={"gpus": 0}).json()["id"]
    with get_session_factory()() as session:
        long_ago = datetime.now(UTC) - timedelta(days=40)
        session.execute(update(Job).where(Job.id.in_([old, active])).values(finished_at=long_ago))
        session.commit()
    runner = CliRunner()
    off = runner.invoke(cli, ["gc"])  # TRAINYARD_JOB_RETENTION_DAYS defaults to 0: off
    assert off.exit_code == 0 and "nothing to do" in off.output
    assert rows_of(old)["Job"] == 1
    monkeypatch.setenv("TRAINYARD_JOB_RETENTION_DAYS", "30")
    get_settings.cache_clear()
    dry = runner.invoke(cli, ["gc", "--dry-run"])
    assert dry.exit_code == 0 and f"[{old}]" in dry.output and rows_of(old)["Job"] == 1
    done = runner.invoke(cli, ["gc"])
    assert done.exit_code == 0 and "deleted 1 jobs" in done.output, done.output
    assert rows_of(old) == {"Epoch": 0, "GpuLease": 0, "Job": 0}
    assert not get_settings().job_dir(old).exists()
    assert rows_of(recent)["Job"] == 1 and get_settings().job_dir(recent).exists()
    assert alice.get(f"/jobs/{active}").json()["status"] == "queued"


def test_the_storage_quota_holds_under_concurrent_uploads(
    clients: dict[str, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two uploads that each fit alone, at once: both pass the check made while the bodies
    # stream in; the recount under the owner's lock lets only one be stored.
    content = npz_bytes(good_arrays())
    monkeypatch.setenv("TRAINYARD_MAX_STORAGE_BYTES_PER_USER", str(int(len(content) * 1.5)))
    get_settings.cache_clear()
    start = threading.Barrier(2)
    codes: list[int] = []

    def send() -> None:
        start.wait()
        codes.append(upload(clients["alice"], content).status_code)

    for _ in range(3):
        threads = [threading.Thread(target=send) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(codes) == [201, 413], codes
        (stored,) = clients["alice"].get("/datasets").json()
        assert clients["alice"].delete(f"/datasets/{stored['id']}").status_code == 204
        codes.clear()
