"""What wakes the event streams: on PostgreSQL a NOTIFY sent by the job_events trigger when
an event commits (no polling), on SQLite a poll of the newest id; and a wake-up that comes
while a stream is still reading is not lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest

from app.api import events as streams
from app.core import events, lifecycle
from app.core.config import get_settings
from app.core.db import get_session_factory
from app.core.models import Job, User
from app.core.spec import JobSpec


def _submit() -> None:
    with get_session_factory()() as session:
        lifecycle.submit(
            session, JobSpec(gpus=0), session.query(User).filter_by(name="alice").one()
        )


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_committed_event_notifies_listeners_and_a_rolled_back_one_does_not(
    tokens: dict[str, str], db: Path
) -> None:
    url = get_settings().database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {streams.EVENTS_CHANNEL}")
        _submit()
        assert [n.channel for n in listener.notifies(timeout=10, stop_after=1)] == [
            streams.EVENTS_CHANNEL
        ]
        with get_session_factory()() as session:  # written, then rolled back: no notification
            job_id = session.query(Job.id).scalar()
            events.status(session, job_id, "cancelled")
            session.flush()
            session.rollback()
        assert list(listener.notifies(timeout=0.5)) == []


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_streams_wake_on_the_notification_not_a_poll(
    tokens: dict[str, str], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "WATCH_SECONDS", 60.0)  # a poll would come far too late

    async def woken_after_a_commit() -> float:
        watcher = streams.Watcher()
        with watcher.subscribed():
            deadline = time.monotonic() + 10
            while watcher.generation == 0:  # it wakes once when its LISTEN is in place
                assert time.monotonic() < deadline, "the watcher never listened"
                await asyncio.sleep(0.02)
            seen = watcher.generation
            started = time.monotonic()
            await asyncio.to_thread(_submit)
            assert await watcher.wait(seen, timeout=5)
            return time.monotonic() - started

    # A commit in a thread and its notification: well under a second on an idle machine,
    # and far from the 60 s a poll would take.
    assert asyncio.run(woken_after_a_commit()) < 4.0


def test_a_wake_up_while_a_stream_reads_is_not_lost() -> None:
    async def scenario() -> bool:
        watcher = streams.Watcher()
        seen = watcher.generation  # the stream notes it, then reads (finding nothing new)
        await watcher._wake()  # an event commits before the stream waits
        return await watcher.wait(seen, timeout=0.2)

    assert asyncio.run(scenario()) is True
