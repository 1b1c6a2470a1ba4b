"""The active-job limit holds under concurrency, on SQLite and PostgreSQL: of 20 submissions
racing with a limit of 2, exactly 2 are accepted, every round."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from app.core.config import get_settings
from app.main import app
from tests.conftest import bearer

RACERS = 20
LIMIT = 2


@pytest.fixture
def client(tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("TRAINYARD_MAX_ACTIVE_JOBS_PER_USER", str(LIMIT))
    get_settings.cache_clear()
    return TestClient(app, headers=bearer(tokens["alice"]))


def race(client: TestClient) -> tuple[Counter[int], list[int]]:
    """RACERS submissions released at once: their status codes, and the ids accepted."""
    start = threading.Barrier(RACERS)
    codes: Counter[int] = Counter()
    accepted: list[int] = []

    def submit() -> None:
        start.wait()
        response = client.post("/jobs", json={"gpus": 0})
        codes[response.status_code] += 1
        if response.status_code == 201:
            accepted.append(response.json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return codes, accepted


def test_concurrent_submissions_never_exceed_the_limit(client: TestClient) -> None:
    for _ in range(5):
        codes, accepted = race(client)
        assert codes == {201: LIMIT, 429: RACERS - LIMIT}, codes
        for job_id in accepted:  # end them: the next round starts with none active
            assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert client.get("/jobs").json()["total"] == 5 * LIMIT


def test_over_the_limit_is_429_naming_it(client: TestClient) -> None:
    for _ in range(LIMIT):
        assert client.post("/jobs", json={"gpus": 0}).status_code == 201
    refused = client.post("/jobs", json={"gpus": 0})
    assert refused.status_code == 429
    assert "TRAINYARD_MAX_ACTIVE_JOBS_PER_USER" in refused.json()["detail"]
    assert client.get("/jobs").json()["total"] == LIMIT
