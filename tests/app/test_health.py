"""/healthz says whether the service can work, and what stops it: 503 naming the data
directory that cannot be written or the database that cannot be reached. Requests that need
the database get 503 with Retry-After when it is away, never a 500."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import get_settings
from app.core.db import get_engine, get_session_factory
from app.main import app
from tests.conftest import bearer, clear_caches

UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"


def test_healthy(db: Path) -> None:
    response = TestClient(app).get("/healthz")
    assert response.status_code == 200
    assert {k: response.json()[k] for k in ("status", "database", "data_dir")} == {
        "status": "ok",
        "database": "ok",
        "data_dir": "ok",
    }


def test_a_full_data_directory_is_503_naming_it(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.full_disk import fill, small_tmpfs

    url = get_engine().url.render_as_string(hide_password=False)
    with small_tmpfs(tmp_path / "disk", size="1m") as disk:
        fill(disk)
        monkeypatch.setenv("TRAINYARD_DATA_DIR", str(disk))
        monkeypatch.setenv("TRAINYARD_DATABASE_URL", url)  # the database stays where it is
        clear_caches()
        response = TestClient(app).get("/healthz")
        get_engine().dispose()
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["database"]) == ("unavailable", "ok")
    assert body["data_dir"] == f"cannot write in {disk}: No space left on device"


def test_an_unreachable_database_is_503_everywhere(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINYARD_DATABASE_URL", UNREACHABLE)
    clear_caches()
    client = TestClient(app, headers=bearer(tokens["alice"]))
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["database"] != "ok" and health.json()["data_dir"] == "ok"
    # With a body (authenticated before it is read) and without one.
    for response in (client.post("/jobs", json={"gpus": 0}), client.get("/jobs")):
        assert response.status_code == 503, response.text
        assert response.json()["detail"].startswith("the database cannot be used right now")
        assert response.headers["Retry-After"] == "10"
    get_settings.cache_clear()
    get_session_factory.cache_clear()
