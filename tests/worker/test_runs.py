"""Run-side writes are fenced by attempt; each epoch is recorded once (both backends)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from app.core import lifecycle
from app.core.db import get_session_factory
from app.core.models import Epoch, FailureReason, Job, JobStatus
from worker import runs


def new_job(host: str = "host-a") -> int:
    """A CPU job already placed on `host` (placement is the scheduler's, tested elsewhere)."""
    with get_session_factory()() as session:
        job = Job(status=JobStatus.placed, spec={"epochs": 3, "gpus": 0}, attempt=0, host=host)
        session.add(job)
        session.commit()
        return job.id


def place(job_id: int, host: str) -> None:
    with get_session_factory()() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.placed, host=host)
        )
        session.commit()


def epoch(number: int, loss: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"epoch": number, "loss": loss, "accuracy": 0.5, "replicas": 1, **extra}


def history(job_id: int) -> list[tuple[int, float | None, int]]:
    with get_session_factory()() as session:
        rows = session.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch))
        return [(row.epoch, row.loss, row.attempt) for row in rows]


def test_claim_once_then_duplicates_are_dropped(db: Path) -> None:
    job_id = new_job()
    with get_session_factory()() as session:
        first = lifecycle.claim(session, job_id, "host-a")
        assert first is not None and first.attempt == 1
        assert lifecycle.claim(session, job_id, "host-b") is None
        job = session.get(Job, job_id)
        assert job is not None and job.host == "host-a" and job.status == JobStatus.running


def test_stale_attempt_writes_are_refused(db: Path) -> None:
    job_id = new_job()
    factory = get_session_factory()
    with factory() as session:
        old = lifecycle.claim(session, job_id, "host-a")
        assert old is not None
        assert runs.record_epoch(session, job_id, old.attempt, epoch(1))
        assert lifecycle.requeue(session, job_id, old.attempt)
        place(job_id, "host-b")
        new = lifecycle.claim(session, job_id, "host-b")
        assert new is not None and new.attempt == old.attempt + 1
        # The first run still believes it owns the job: every write of it is refused.
        assert not runs.record_epoch(session, job_id, old.attempt, epoch(2, loss=9.0))
        assert runs.heartbeat(session, job_id, old.attempt) == (False, False)
        assert not lifecycle.finish(session, job_id, old.attempt, JobStatus.succeeded)
        assert runs.record_epoch(session, job_id, new.attempt, epoch(2, loss=0.8))
        assert lifecycle.finish(session, job_id, new.attempt, JobStatus.succeeded)
        assert not lifecycle.finish(
            session, job_id, new.attempt, JobStatus.failed, FailureReason.internal, "late"
        )
    assert history(job_id) == [(1, 1.0, 1), (2, 0.8, 2)]


def test_each_epoch_recorded_once(db: Path) -> None:
    job_id = new_job()
    with get_session_factory()() as session:
        first = lifecycle.claim(session, job_id, "host-a")
        assert first is not None
        for number in (1, 2):
            assert runs.record_epoch(session, job_id, first.attempt, epoch(number))
        # The same epoch again from the same attempt: kept once, first record wins.
        assert runs.record_epoch(session, job_id, first.attempt, epoch(2, loss=7.0))
        assert lifecycle.requeue(session, job_id, first.attempt)
        place(job_id, "host-a")
        second = lifecycle.claim(session, job_id, "host-a")
        assert second is not None
        # A resumed trainer replays its checkpointed history: nothing changes.
        assert runs.record_epoch(session, job_id, second.attempt, epoch(1, 5.0, replayed=True))
        # Epoch 2 was retrained (the first run died before its checkpoint): newest wins.
        assert runs.record_epoch(session, job_id, second.attempt, epoch(2, loss=0.7))
        assert runs.record_epoch(session, job_id, second.attempt, epoch(3, loss=0.6))
    assert history(job_id) == [(1, 1.0, 1), (2, 0.7, 2), (3, 0.6, 2)]
