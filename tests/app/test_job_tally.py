"""job_tally (migration 0019's triggers) counts the jobs by status and priority exactly,
whatever changes them, concurrent transactions included; folding keeps the sums; and the
counts read from it (a page's total, a queued job's place) are those a scan of the jobs
gives."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from app.core import job_tally, lifecycle
from app.core.config import get_settings
from app.core.db import get_session_factory
from app.core.jobs import ahead_of_a_place, place_params, queue_key
from app.core.models import Job, JobStatus, JobTally
from app.core.spec import JobSpec
from app.core.users import create_user
from app.main import app
from tests.conftest import bearer, register_test_host
from worker.scheduler import schedule

Counts = dict[tuple[str, int], int]


def tallied(session: Session) -> Counts:
    rows = session.execute(
        select(JobTally.status, JobTally.priority, func.sum(JobTally.delta)).group_by(
            JobTally.status, JobTally.priority
        )
    )
    return {(status, priority): int(n) for status, priority, n in rows if n}


def counted(session: Session) -> Counts:
    rows = session.execute(
        select(Job.status, Job.priority, func.count()).group_by(Job.status, Job.priority)
    )
    return {(status, priority): int(n) for status, priority, n in rows}


def assert_exact(session: Session) -> Counts:
    session.commit()  # a fresh snapshot on SQLite too
    truth = counted(session)
    assert tallied(session) == truth
    return truth


def test_every_change_of_a_job_is_counted(tokens: dict[str, str]) -> None:
    register_test_host(gpus=2)
    root = TestClient(app, headers=bearer(tokens["root"]))
    ids = [
        root.post("/jobs", json={"gpus": gpus, "priority": priority}).json()["id"]
        for gpus, priority in [(1, 0), (1, 0), (2, 1), (0, 5), (1, 0), (0, 0)]
    ]
    with get_session_factory()() as session:
        assert assert_exact(session) == {("queued", 0): 4, ("queued", 1): 1, ("queued", 5): 1}
        placed = schedule(session, get_settings())  # places, and folds the rows
        assert placed
        assert assert_exact(session)[("placed", 1)] == 1
        keys = session.execute(select(JobTally.status, JobTally.priority)).all()
        assert len(keys) == len(set(keys)), "a pass leaves one row per (status, priority)"
        running = placed[0].job_id
        claim = lifecycle.claim(session, running, "test-host")
        assert claim is not None
        assert_exact(session)
        assert lifecycle.requeue(session, running, claim.attempt)  # running -> queued
        assert_exact(session)
        job = session.get(Job, ids[-1])
        assert job is not None and lifecycle.cancel(session, job)
        assert lifecycle.delete_ended(session, ids[-1])
        assert_exact(session)
        # Several jobs changed by one statement, a priority changed, a job deleted: counted
        # row by row. A change of neither status nor priority writes nothing.
        before = session.scalar(select(func.count()).select_from(JobTally))
        session.execute(update(Job).where(Job.id.in_(ids[:2])).values(waiting_reason="x"))
        session.commit()
        assert session.scalar(select(func.count()).select_from(JobTally)) == before
        session.execute(update(Job).values(status=JobStatus.failed))
        session.execute(update(Job).where(Job.id == ids[0]).values(priority=3))
        assert assert_exact(session)[("failed", 3)] == 1
        session.execute(delete(Job).where(Job.id == ids[1]))
        assert_exact(session)
        truth = assert_exact(session)
        job_tally.fold(session)
        assert assert_exact(session) == truth
        assert session.scalar(select(func.count()).select_from(JobTally)) == len(truth)
        if session.get_bind().dialect.name == "postgresql":  # no row triggers fire for it
            session.execute(text("TRUNCATE jobs CASCADE"))
            assert assert_exact(session) == {}


def test_concurrent_submissions_cancels_and_folds_keep_the_count_exact(db: Path) -> None:
    """Four submitters, a canceller and two folders at once (folds run one at a time under
    the scheduler's lock in production; two at once here, and still exact)."""
    factory = get_session_factory()
    with factory() as session:
        owners = [create_user(session, f"racer-{k}")[0] for k in range(4)]
    done = threading.Event()
    failures: list[BaseException] = []

    def guarded(work: object) -> threading.Thread:
        def run() -> None:
            try:
                work()  # type: ignore[operator]
            except BaseException as error:  # reported by the test, not lost in a thread
                failures.append(error)

        return threading.Thread(target=run)

    def submit(owner_index: int) -> None:
        with factory() as session:
            owner = session.merge(owners[owner_index])
            for n in range(15):
                spec = JobSpec(gpus=0, priority=n % 3)
                lifecycle.submit(session, spec, owner)

    cancelled = threading.Event()  # enough cancels: whoever got the GIL, cancels happened

    def cancel() -> None:
        count = 0
        with factory() as session:
            while not (done.is_set() and cancelled.is_set()):
                job = session.scalars(
                    select(Job).where(Job.status == JobStatus.queued).order_by(Job.id.desc())
                ).first()
                if job is not None and lifecycle.cancel(session, job):
                    count += 1
                    if count >= 5:
                        cancelled.set()
                session.commit()

    def fold() -> None:
        with factory() as session:
            while not done.is_set():
                job_tally.fold(session)
                session.commit()

    submitters = [guarded(lambda k=k: submit(k)) for k in range(4)]
    others = [guarded(cancel), guarded(fold), guarded(fold)]
    for thread in [*submitters, *others]:
        thread.start()
    for thread in submitters:
        thread.join()
    done.set()
    for thread in others:
        thread.join()
    assert not failures, failures
    with factory() as session:
        truth = assert_exact(session)
        assert sum(truth.values()) == 60
        assert sum(n for (status, _), n in truth.items() if status == "cancelled") >= 5, truth
        job_tally.fold(session)
        assert assert_exact(session) == truth


def test_a_place_counted_from_either_end_of_the_queue_is_the_same(db: Path) -> None:
    """Every queued job's place, counted from the back (the default for fewer than 500
    behind it) and from the front (forced with a bound of 2), is its index in the queue."""
    with get_session_factory()() as session:
        owner = create_user(session, "queuer", is_admin=True)[0]
        priorities = [0, 2, 0, 1, 0, 0, 2, 0, 1, 0, 0, 0]
        jobs = [lifecycle.submit(session, JobSpec(gpus=0, priority=p), owner) for p in priorities]
        lifecycle.cancel(session, jobs[4])
        queue = sorted(queue_key(job.priority, job.id) for job in jobs if job is not jobs[4])
        for folded in (False, True):
            if folded:
                job_tally.fold(session)
                session.commit()
            for ahead, key in enumerate(queue):
                for statement in (ahead_of_a_place(), ahead_of_a_place(from_the_back=2)):
                    assert session.scalar(statement, place_params(key)) == ahead
            # The cancelled job's place, where no queued job is, has the jobs before it ahead.
            cancelled = queue_key(jobs[4].priority, jobs[4].id)
            assert session.scalar(ahead_of_a_place(2), place_params(cancelled)) == sum(
                key < cancelled for key in queue
            )
