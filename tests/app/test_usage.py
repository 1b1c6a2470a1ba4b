"""GET /me and GET /usage (the dashboard's user and GPU-hours), on both backends."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from app.core import lifecycle
from app.core.db import get_session_factory
from app.core.models import GpuLease, User, utcnow
from app.core.spec import JobSpec
from app.main import app
from tests.conftest import bearer


def test_me_names_the_tokens_user(tokens: dict[str, str]) -> None:
    client = TestClient(app)
    assert client.get("/me", headers=bearer(tokens["alice"])).json() == {
        "name": "alice",
        "is_admin": False,
    }
    assert client.get("/me", headers=bearer(tokens["root"])).json()["is_admin"] is True
    assert client.get("/me").status_code == 401


def _lease(owner: str, index: int, started_hours_ago: float, ended_hours_ago: float | None) -> None:
    now = utcnow()
    with get_session_factory()() as session:
        user = session.query(User).filter_by(name=owner).one()
        job = lifecycle.submit(session, JobSpec(gpus=1), user)
        released = None if ended_hours_ago is None else now - timedelta(hours=ended_hours_ago)
        session.add(
            GpuLease(
                job_id=job.id,
                attempt=1,
                host="lab1",
                gpu_index=index,
                leased_at=now - timedelta(hours=started_hours_ago),
                released_at=released,
            )
        )
        session.commit()


def test_usage_counts_each_leases_part_inside_the_last_day_and_week(
    tokens: dict[str, str],
) -> None:
    _lease("alice", 0, 30, 20)  # 4 h of it in the last 24 h, all 10 h in the week
    _lease("alice", 1, 2, None)  # still held: 2 h so far
    _lease("bob", 2, 24 * 8, 24 * 7.5)  # before the week: not counted, bob not listed
    _lease("root", 3, 24 * 6, 24 * 6 - 1)  # 1 h, six days ago
    usage = TestClient(app).get("/usage", headers=bearer(tokens["bob"])).json()
    assert [row["user"] for row in usage] == ["alice", "root"]  # most GPU-hours first
    alice, root = usage
    assert alice["gpu_hours_24h"] == pytest.approx(6, abs=0.01)
    assert alice["gpu_hours_7d"] == pytest.approx(12, abs=0.01)
    assert root["gpu_hours_24h"] == 0 and root["gpu_hours_7d"] == pytest.approx(1, abs=0.01)
