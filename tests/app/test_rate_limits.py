"""Limits on how much one user may ask at once: submissions per minute, uploads checked at
once. Over them: 429 with Retry-After, and nothing stored."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.rate_limit import SlidingWindow
from app.core.config import get_settings
from app.core.datasets import validation_slots
from app.main import app
from tests.conftest import bearer


def test_the_window_admits_a_rate_and_says_when_to_retry() -> None:
    window = SlidingWindow(60)
    assert [window.admit(1, 3, now=t) for t in (0, 10, 20)] == [None, None, None]
    assert window.admit(1, 3, now=30) == 30  # the first event expires at 60
    assert window.admit(2, 3, now=30) is None  # another user has a window of its own
    assert window.admit(1, 3, now=60.5) is None


def test_submissions_over_the_rate_are_429_with_retry_after(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINYARD_SUBMIT_RATE_PER_MINUTE", "3")
    get_settings.cache_clear()
    monkeypatch.setattr("app.api.jobs.submissions", SlidingWindow())
    alice = TestClient(app, headers=bearer(tokens["alice"]))
    assert [alice.post("/jobs", json={"gpus": 0}).status_code for _ in range(3)] == [201] * 3
    refused = alice.post("/jobs", json={"gpus": 0})
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "TRAINYARD_SUBMIT_RATE_PER_MINUTE" in refused.json()["detail"]
    bob = TestClient(app, headers=bearer(tokens["bob"]))
    assert bob.post("/jobs", json={"gpus": 0}).status_code == 201
    assert alice.get("/jobs").json()["total"] == 4


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
