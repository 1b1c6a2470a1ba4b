"""A page of jobs costs the same few queries whatever its length (it used to cost three or
four per job), on SQLite and PostgreSQL, and shows the same fields as a single job."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event

from app.core import lifecycle
from app.core.config import get_settings
from app.core.db import get_engine, get_session_factory
from app.main import app
from tests.conftest import bearer, register_test_host
from worker import runs
from worker.scheduler import schedule


@contextmanager
def counted_queries() -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_a_page_costs_the_same_queries_whatever_its_length(tokens: dict[str, str]) -> None:
    register_test_host(gpus=4)
    client = TestClient(app, headers=bearer(tokens["alice"]))
    ids = [client.post("/jobs", json={"gpus": 1}).json()["id"] for _ in range(30)]
    # Four placed on the host's GPUs, three of them running with an epoch; the rest queued:
    # every part of a view is used.
    with get_session_factory()() as session:
        assert len(schedule(session, get_settings())) == 4
        for job_id in ids[:3]:
            claim = lifecycle.claim(session, job_id, "test-host")
            assert claim is not None
            assert runs.record_epoch(session, job_id, claim.attempt, {"epoch": 1, "loss": 1.0})

    def queries_for(limit: int, offset: int = 0) -> int:
        with counted_queries() as statements:
            page = client.get("/jobs", params={"limit": limit, "offset": offset}).json()
        assert len(page["items"]) == limit
        return len(statements)

    # The 5 oldest hold a running, a placed and a queued job, as the whole 30 do. (A page of
    # jobs only queued skips the lease and epoch queries.)
    assert queries_for(30) == queries_for(5, offset=25)
    listed = {job["id"]: job for job in client.get("/jobs", params={"limit": 30}).json()["items"]}
    for job_id in (ids[0], ids[3], ids[10], ids[-1]):  # running, placed, queued, queued last
        assert listed[job_id] == client.get(f"/jobs/{job_id}").json()
    assert listed[ids[0]]["gpu_indices"] and listed[ids[0]]["current_epoch"] == 1
    assert listed[ids[3]]["status"] == "placed" and listed[ids[3]]["queue_position"] is None
    assert [listed[i]["queue_position"] for i in ids[4:7]] == [1, 2, 3]


def test_every_page_shows_each_queued_job_at_its_place_in_the_queue(
    tokens: dict[str, str],
) -> None:
    """Priorities mixed, some jobs ended, pages of every offset, with and without the status
    filter: a page's queue positions (counted up to its first queued job, numbered from
    there) are the places in the queue order, as a single job's count says too."""
    root = TestClient(app, headers=bearer(tokens["root"]))
    priorities = [0, 2, 0, 1, 0, 5, 2, 0, 0, 1, 3, 0, 2, 0, 0, 4, 0, 1, 0, 0]
    ids = [root.post("/jobs", json={"gpus": 0, "priority": p}).json()["id"] for p in priorities]
    for job_id in ids[2::5]:
        assert root.post(f"/jobs/{job_id}/cancel").status_code == 200
    queued = sorted(
        (-p, job_id) for p, job_id in zip(priorities, ids, strict=True) if job_id not in ids[2::5]
    )
    expected = {job_id: place for place, (_, job_id) in enumerate(queued, start=1)}
    for status in (None, "queued"):
        for offset in range(0, len(ids), 6):
            params: dict[str, Any] = {"limit": 6, "offset": offset}
            if status:
                params["status"] = status
            for job in root.get("/jobs", params=params).json()["items"]:
                assert job["queue_position"] == expected.get(job["id"]), job
    for job_id in ids:
        assert root.get(f"/jobs/{job_id}").json()["queue_position"] == expected.get(job_id)


def test_reading_someone_elses_job_costs_no_extra_query_for_its_owner(
    tokens: dict[str, str],
) -> None:
    """The job's owner comes in the job's own query: an admin reading alice's job issues as
    many statements as alice does (the owner was a second round trip, lazily loaded)."""
    alice = TestClient(app, headers=bearer(tokens["alice"]))
    root = TestClient(app, headers=bearer(tokens["root"]))
    job_id = alice.post("/jobs", json={"gpus": 0}).json()["id"]
    issued = {}
    for name, client in (("alice", alice), ("root", root)):
        with counted_queries() as statements:
            assert client.get(f"/jobs/{job_id}").json()["owner"] == "alice"
        issued[name] = len(statements)
    assert issued["root"] == issued["alice"], issued
