"""Limits on how much one user may ask at once: submissions per minute, uploads checked at
once. Over them: 429 with Retry-After, and nothing stored."""

from __future__ import annotations

import io
import threading
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.core import lifecycle
from app.core.config import get_settings
from app.core.datasets import validation_slots
from app.core.db import get_session_factory
from app.core.models import Job
from app.core.spec import JobSpec
from app.core.users import create_user
from app.main import app
from tests.conftest import bearer
from tests.e2e.service import free_port, processes, service_env, wait_healthy


@pytest.fixture
def rate(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def set_rate(per_minute: int) -> None:
        monkeypatch.setenv("TRAINYARD_SUBMIT_RATE_PER_MINUTE", str(per_minute))
        get_settings.cache_clear()

    return set_rate


def test_submissions_over_the_rate_are_429_with_retry_after(
    tokens: dict[str, str], rate: Callable[[int], None]
) -> None:
    rate(3)
    alice = TestClient(app, headers=bearer(tokens["alice"]))
    assert [alice.post("/jobs", json={"gpus": 0}).status_code for _ in range(3)] == [201] * 3
    refused = alice.post("/jobs", json={"gpus": 0})
    assert refused.status_code == 429
    # A burst of 3 used the minute up; the next is due 60/3 s after the burst began.
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert "TRAINYARD_SUBMIT_RATE_PER_MINUTE" in refused.json()["detail"]
    bob = TestClient(app, headers=bearer(tokens["bob"]))
    assert bob.post("/jobs", json={"gpus": 0}).status_code == 201
    assert alice.get("/jobs").json()["total"] == 4


def test_after_a_burst_one_submission_is_admitted_per_interval(db: Path) -> None:
    """At 30 a minute: 30 at once, then one every 2 s (times given, so a slow machine
    cannot blur the intervals)."""
    with get_session_factory()() as session:
        carol = create_user(session, "carol")[0]

        def submit(at: float) -> int | None:
            try:
                lifecycle.submit(session, JobSpec(gpus=0), carol, per_minute=30, now=at)
            except lifecycle.SubmitRateLimit as refused:
                assert refused.per_minute == 30
                return refused.retry_after
            return None

        t0 = 1_800_000_000.0
        assert [submit(t0) for _ in range(30)] == [None] * 30
        assert submit(t0) == 2  # the next is due 60/30 s after the burst
        assert submit(t0 + 1.5) == 1  # (whole seconds, rounded up)
        assert submit(t0 + 2) is None
        assert submit(t0 + 2) == 2
        # 7 s later: 3 more (one per 2 s gone by), not a new burst.
        assert [submit(t0 + 9) for _ in range(4)] == [None, None, None, 1]
        assert submit(t0 + 100) is None  # a full minute idle: a full burst again
        assert [submit(t0 + 100) for _ in range(30)] == [None] * 29 + [2]
        owned = select(func.count()).select_from(Job).where(Job.owner_id == carol.id)
        assert session.scalar(owned) == 30 + 1 + 3 + 30


def test_racing_submissions_never_exceed_the_burst(
    tokens: dict[str, str], rate: Callable[[int], None]
) -> None:
    rate(3)
    alice = TestClient(app, headers=bearer(tokens["alice"]))
    start = threading.Barrier(20)
    answers: list[int] = []  # list.append is atomic; Counter's += is not

    def submit() -> None:
        start.wait()
        answers.append(alice.post("/jobs", json={"gpus": 0}).status_code)

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert Counter(answers) == {201: 3, 429: 17}, answers
    assert alice.get("/jobs").json()["total"] == 3


def test_a_submission_refused_for_another_reason_does_not_count(
    tokens: dict[str, str], rate: Callable[[int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The active-job limit refuses in the transaction that moved the rate: it is taken back."""
    monkeypatch.setenv("TRAINYARD_MAX_ACTIVE_JOBS_PER_USER", "1")
    rate(3)
    alice = TestClient(app, headers=bearer(tokens["alice"]))
    first = alice.post("/jobs", json={"gpus": 0})
    assert first.status_code == 201
    for _ in range(3):
        over = alice.post("/jobs", json={"gpus": 0})
        assert over.status_code == 429
        assert "TRAINYARD_MAX_ACTIVE_JOBS_PER_USER" in over.json()["detail"]
    for _ in range(2):  # the second and third of the burst
        assert alice.post(f"/jobs/{first.json()['id']}/cancel").status_code == 200
        first = alice.post("/jobs", json={"gpus": 0})
        assert first.status_code == 201
    assert alice.post(f"/jobs/{first.json()['id']}/cancel").status_code == 200
    refused = alice.post("/jobs", json={"gpus": 0})
    assert "TRAINYARD_SUBMIT_RATE_PER_MINUTE" in refused.json()["detail"]


def test_the_rate_holds_across_api_processes(
    tokens: dict[str, str], db: Path, tmp_path: Path
) -> None:
    """Two `trainyard api` processes on one database: together they admit the rate once."""
    ports = [free_port()]
    while (port := free_port()) == ports[0]:  # the first one's socket is closed: it may recur
        pass
    ports.append(port)
    env = service_env(db, database_url=get_settings().database_url, submit_rate_per_minute="3")
    commands = [["api", "--port", str(port)] for port in ports]
    with processes(commands, env, tmp_path / "logs") as started:
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for base in bases:
            wait_healthy(base)
        assert all(process.poll() is None for process in started)  # each got its own port
        headers = bearer(tokens["alice"])
        codes = [
            httpx.post(f"{bases[n % 2]}/jobs", json={"gpus": 0}, headers=headers).status_code
            for n in range(5)
        ]
    assert codes == [201, 201, 201, 429, 429]


def npz() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
        y_train=np.arange(8) % 2,
        x_test=rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8),
        y_test=np.arange(4) % 2,
    )
    return buffer.getvalue()


def test_uploads_beyond_the_ones_being_checked_are_429(tokens: dict[str, str]) -> None:
    client = TestClient(app, headers=bearer(tokens["alice"]))
    slots = validation_slots(get_settings())
    taken = 0
    while slots.acquire(blocking=False):  # as many uploads as allowed are being checked
        taken += 1
    assert taken == get_settings().max_concurrent_uploads
    try:
        busy = client.post("/datasets", files={"file": ("d.npz", npz())})
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "5"
        assert "TRAINYARD_MAX_CONCURRENT_UPLOADS" in busy.json()["detail"]
        assert client.get("/datasets").json() == []
    finally:
        for _ in range(taken):
            slots.release()
    assert client.post("/datasets", files={"file": ("d.npz", npz())}).status_code == 201


def test_a_zip_bomb_is_422_even_while_every_upload_slot_is_taken(
    tokens: dict[str, str],
) -> None:
    """The slots bound the memory of loading arrays; an archive refused by its headers alone
    (declared sizes, compression method) needs none, so a burst of bombs gets 422s."""
    client = TestClient(app, headers=bearer(tokens["alice"]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_BZIP2) as archive:
        archive.writestr("x_train.npy", b"\0" * 100_000)
    slots = validation_slots(get_settings())
    taken = 0
    while slots.acquire(blocking=False):
        taken += 1
    try:
        bomb = client.post("/datasets", files={"file": ("bomb.npz", buffer.getvalue())})
        assert bomb.status_code == 422, bomb.text
        assert "compression method 12" in bomb.json()["detail"][0]["msg"]
        # A file whose headers are fine still waits for a slot.
        assert client.post("/datasets", files={"file": ("d.npz", npz())}).status_code == 429
    finally:
        for _ in range(taken):
            slots.release()
    assert client.get("/datasets").json() == []
