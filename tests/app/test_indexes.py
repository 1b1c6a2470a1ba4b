"""The job list and the queue are read off indexes, not sorted (migration 0009), on
PostgreSQL, whose planner is what decides at scale: a page of GET /jobs, with and without a
status filter, and the queue positions, as the app issues them, are explained on a few
thousand analyzed rows. bench/api_scale.py measures what this keeps at 100,000 jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from sqlalchemy import event, insert, text
from sqlalchemy.orm import Session

from app.core import jobs as job_queries
from app.core.db import get_engine, get_session_factory
from app.core.models import Job, JobStatus
from tests.conftest import Configure

JOBS = 10_000


def status_of(i: int) -> JobStatus:
    if i % 10 == 0:
        return JobStatus.queued
    return JobStatus.running if i % 100 == 1 else JobStatus.succeeded


@pytest.fixture
def many_jobs(configure: Configure, postgres_url: str) -> None:
    """JOBS jobs, nearly all ended, a tenth queued, one in a hundred running, one in fifty of
    the queued ones on the CPU; analyzed (and vacuumed, as autovacuum would have done to a
    table this old)."""
    configure(database_url=postgres_url)
    spec = {"dataset": "cifar10", "gpus": 1, "epochs": 70, "lr": 0.005, "batch_size": 64}
    rows = [
        {"status": status_of(i), "spec": {**spec, "gpus": gpus}, "gpus": gpus, "priority": i % 3}
        for i in range(JOBS)
        for gpus in [0 if i % 500 == 0 else 1]
    ]
    with get_session_factory()() as session:
        session.execute(insert(Job), rows)
        session.commit()
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE jobs"))


def plans_of(call: Callable[[Session], object]) -> Iterator[tuple[str, dict[str, Any]]]:
    """EXPLAIN (FORMAT JSON) of each SELECT that `call` issues, with its own parameters."""
    issued: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        issued.append((statement, parameters))

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        with get_session_factory()() as session:
            call(session)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    with engine.connect() as connection:
        for statement, parameters in issued:
            if statement.lstrip().upper().startswith("SELECT"):
                explained = connection.exec_driver_sql(
                    f"EXPLAIN (FORMAT JSON) {statement}", parameters
                ).scalar_one()
                yield statement, explained[0]["Plan"]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def page_plan(status: JobStatus | None, limit: int) -> list[dict[str, Any]]:
    """The plan of the page query of GET /jobs (the one ordered by id; the other counts)."""
    plans = [
        list(nodes(plan))
        for statement, plan in plans_of(lambda s: job_queries.list_jobs(s, status, limit, 0))
        if "ORDER BY jobs.id DESC" in statement
    ]
    assert len(plans) == 1, plans
    return plans[0]


def kinds(plan: list[dict[str, Any]]) -> list[str]:
    return [f"{node['Node Type']} on {node.get('Relation Name', '-')}" for node in plan]


@pytest.mark.usefixtures("many_jobs")
def test_job_pages_and_queue_positions_are_read_off_indexes() -> None:
    # A page, no filter: the primary key, backwards. A status: (status, id) backwards, or the
    # primary key skipping the other statuses; with the status index alone, the 100 running
    # jobs were fetched whole and sorted for a page of 50.
    for status in (None, JobStatus.running, JobStatus.queued):
        for limit in (50, 500):
            plan = page_plan(status, limit)
            where = f"status={status}, limit={limit}: {kinds(plan)}"
            assert "Seq Scan on jobs" not in kinds(plan), where
            assert any("Index Name" in node for node in plan), where
            # Sorting what fits in the page is fine (a status with fewer jobs than the limit).
            sorted_rows = [n["Plans"][0]["Plan Rows"] for n in plan if n["Node Type"] == "Sort"]
            assert all(rows <= limit for rows in sorted_rows), where
    # The queue positions number the queue in QUEUE_ORDER off (status, priority DESC, id),
    # where they used to sort every queued job for each request.
    with get_session_factory()() as session:
        first_five = job_queries.list_jobs(session, JobStatus.queued, 5, 0)[0]
    for jobs in (first_five, first_five[:1]):  # a page of them; one (counted, not numbered)
        (plan,) = [
            list(nodes(p)) for _, p in plans_of(partial(job_queries.queue_positions, jobs=jobs))
        ]
        assert not [node for node in plan if node["Node Type"] == "Sort"], kinds(plan)
        assert "Seq Scan on jobs" not in kinds(plan), kinds(plan)


@pytest.mark.usefixtures("many_jobs")
def test_a_scheduling_pass_finds_cpu_jobs_further_back_off_their_partial_index() -> None:
    """Past the front of the queue, a scheduling pass looks for the next queued CPU jobs for
    free CPU slots (worker/scheduler.py): read off ix_jobs_queued_on_cpu, whose predicate the
    planner must match, not by walking every queued job (49 in 50 of them need GPUs)."""
    with get_session_factory()() as session:
        front = job_queries.queued_in_order(session, limit=5)

    def further_back(session: Session) -> None:
        job_queries.queued_in_order(session, after=front[-1].key, limit=2, on_cpu_only=True)

    ((_, plan),) = list(plans_of(further_back))
    used = [node.get("Index Name") for node in nodes(plan)]
    # (It may sort what it read there: the queued CPU jobs alone, a few.)
    assert "ix_jobs_queued_on_cpu" in used, kinds(list(nodes(plan)))
    assert "Seq Scan on jobs" not in kinds(list(nodes(plan)))
