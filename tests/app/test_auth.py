"""Every endpoint but /healthz needs a valid bearer token; owners and admins act on jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.db import get_session_factory
from app.core.models import User
from app.core.users import revoke_user
from app.main import app
from tests.conftest import bearer, place_and_claim, register_test_host


@pytest.fixture
def client(tokens: dict[str, str]) -> TestClient:
    return TestClient(app)


def submit(client: TestClient, token: str, **spec: object) -> int:
    response = client.post("/jobs", json={"gpus": 0, **spec}, headers=bearer(token))
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


PROTECTED = [
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/1"),
    ("GET", "/jobs/1/metrics"),
    ("GET", "/jobs/1/plot.png"),
    ("POST", "/jobs/1/cancel"),
    ("GET", "/datasets"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_missing_wrong_or_revoked_token_is_401(
    client: TestClient, tokens: dict[str, str], method: str, path: str
) -> None:
    submit(client, tokens["alice"])
    with get_session_factory()() as session:
        revoke_user(session, "bob")
    for headers in (
        {},
        bearer("ty_not-a-real-token"),
        bearer(tokens["alice"] + "x"),
        {"Authorization": f"Basic {tokens['alice']}"},
        bearer(tokens["bob"]),  # revoked
    ):
        response = client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/jobs", headers=bearer(tokens["alice"])).json()["total"] == 1


def test_healthz_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200


def test_everyone_reads_only_owner_or_admin_acts(
    client: TestClient, tokens: dict[str, str]
) -> None:
    job_id = submit(client, tokens["alice"])
    bob = bearer(tokens["bob"])
    # A shared box is transparent: bob sees alice's job, its metrics and plot.
    assert client.get(f"/jobs/{job_id}", headers=bob).json()["owner"] == "alice"
    assert client.get("/jobs", headers=bob).json()["total"] == 1
    assert client.get(f"/jobs/{job_id}/metrics", headers=bob).status_code == 200
    assert client.get(f"/jobs/{job_id}/plot.png", headers=bob).status_code == 200
    # ...but may not cancel it, nor read its log or model.
    for method, path in (
        ("POST", f"/jobs/{job_id}/cancel"),
        ("GET", f"/jobs/{job_id}/logs"),
        ("GET", f"/jobs/{job_id}/model"),
    ):
        response = client.request(method, path, headers=bob)
        assert response.status_code == 403, path
        assert "owner or an admin" in response.json()["detail"]
    assert client.get(f"/jobs/{job_id}", headers=bob).json()["status"] == "queued"
    # An admin may.
    assert client.get(f"/jobs/{job_id}/logs", headers=bearer(tokens["root"])).status_code == 200
    cancelled = client.post(f"/jobs/{job_id}/cancel", headers=bearer(tokens["root"]))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_only_admins_raise_priority(client: TestClient, tokens: dict[str, str]) -> None:
    response = client.post(
        "/jobs", json={"gpus": 0, "priority": 5}, headers=bearer(tokens["alice"])
    )
    assert response.status_code == 403
    assert response.json()["detail"][0]["loc"] == ["body", "priority"]
    assert submit(client, tokens["alice"], priority=-3)  # lowering one's own is fine
    job_id = submit(client, tokens["root"], priority=5)
    assert client.get(f"/jobs/{job_id}", headers=bearer(tokens["bob"])).json()["priority"] == 5
    assert client.get("/jobs", headers=bearer(tokens["bob"])).json()["total"] == 2


def test_tokens_are_random_and_stored_only_hashed(tokens: dict[str, str], db: Path) -> None:
    assert len(set(tokens.values())) == 3
    assert all(len(token) >= 43 for token in tokens.values())  # 32 bytes, base64url
    with get_session_factory()() as session:
        stored = {user.name: user.token_hash for user in session.scalars(select(User))}
    for name, token in tokens.items():
        assert token not in stored[name]
        assert len(stored[name]) == 64
    database_file = db / "trainyard.db"
    if database_file.exists():
        raw = database_file.read_bytes()
        assert not any(token.encode() in raw for token in tokens.values())


def test_admin_cancels_another_users_running_job(
    client: TestClient, tokens: dict[str, str]
) -> None:
    register_test_host()
    job_id = submit(client, tokens["alice"], gpus=1)
    place_and_claim(job_id)
    refused = client.post(f"/jobs/{job_id}/cancel", headers=bearer(tokens["bob"]))
    assert refused.status_code == 403
    job = client.get(f"/jobs/{job_id}", headers=bearer(tokens["bob"])).json()
    assert (job["status"], job["cancel_requested"]) == ("running", False)
    accepted = client.post(f"/jobs/{job_id}/cancel", headers=bearer(tokens["root"]))
    assert accepted.status_code == 200
    assert (accepted.json()["status"], accepted.json()["cancel_requested"]) == ("running", True)
