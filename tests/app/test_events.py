"""Event streams against a real `trainyard api` process on both backends: a client that drops
its connection mid-run and reconnects with Last-Event-ID gets every epoch exactly once and
the `end` event; NDJSON gives the same events; ids older than what is kept are 410; /events
follows every job's status."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.core import lifecycle
from app.core.config import get_settings
from app.core.db import get_session_factory
from app.core.models import JobStatus
from tests.conftest import place_and_claim, register_test_host
from tests.e2e.service import free_port, processes, service_env, wait_healthy
from worker import runs

Event = dict[str, Any]


@pytest.fixture
def api(tokens: dict[str, str], db: Path, tmp_path: Path) -> Iterator[httpx.Client]:
    """Alice's client of a `trainyard api` serving this test's database."""
    port = free_port()
    url = get_settings().database_url
    env = service_env(db, database_url=url)
    with processes([["api", "--port", str(port)]], env, tmp_path / "logs"):
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        headers = {"Authorization": f"Bearer {tokens['alice']}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            yield client


def sse(response: httpx.Response) -> Iterator[Event]:
    """The events of a text/event-stream, as they come (comments skipped)."""
    event: Event = {}
    for line in response.iter_lines():
        if not line:
            if "event" in event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


def train_in_background(job_id: int, epochs: int, pause: float) -> threading.Thread:
    """What a worker writes for a run: its epochs, a pause apart, a log line, then success."""
    register_test_host()
    attempt = place_and_claim(job_id)

    def run() -> None:
        with get_session_factory()() as session:
            for epoch in range(1, epochs + 1):
                time.sleep(pause)
                record = {"epoch": epoch, "loss": 1 / epoch, "val_accuracy": epoch / 10}
                assert runs.record_epoch(session, job_id, attempt, record)
                assert runs.append_log(session, job_id, attempt, [f"epoch {epoch} done"], 1000)
            assert lifecycle.finish(session, job_id, attempt, JobStatus.succeeded)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_dropped_stream_resumes_exactly_after_the_last_event(api: httpx.Client) -> None:
    job_id = api.post("/jobs", json={"gpus": 1, "epochs": 5}).json()["id"]
    worker = train_in_background(job_id, epochs=5, pause=0.4)
    received: list[Event] = []
    with api.stream("GET", f"/jobs/{job_id}/events") as first:
        assert first.headers["content-type"].startswith("text/event-stream")
        for event in sse(first):
            received.append(event)
            if event["event"] == "epoch" and json.loads(event["data"])["epoch"] == 2:
                break  # the connection drops here, mid-run
    last = received[-1]["id"]
    with api.stream("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": last}) as again:
        received += list(sse(again))  # to the end: the server closes after `end`
    worker.join()
    ids = [int(event["id"]) for event in received if "id" in event]
    assert ids == sorted(set(ids)), "ids are increasing, none repeated"
    assert "id" not in received[-1]  # `end`: resuming after the last id gives it again
    kinds = [event["event"] for event in received]
    epochs = [json.loads(e["data"])["epoch"] for e in received if e["event"] == "epoch"]
    assert epochs == [1, 2, 3, 4, 5]
    statuses = [json.loads(e["data"])["status"] for e in received if e["event"] == "status"]
    assert statuses == ["queued", "placed", "running", "succeeded"]
    assert kinds.count("log") == 5 and kinds[-1] == "end"
    assert json.loads(received[-1]["data"])["status"] == "succeeded"

    # The same history as NDJSON, for scripts; ?after= as Last-Event-ID.
    lines = api.get(
        f"/jobs/{job_id}/events",
        params={"after": ids[2]},
        headers={"Accept": "application/x-ndjson"},
    )
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in lines.text.splitlines()]
    assert [r["id"] for r in records] == [*ids[3:], None]
    assert records[-1]["event"] == "end"


def test_log_lines_reach_only_the_owner_and_admins(
    api: httpx.Client, tokens: dict[str, str]
) -> None:
    job_id = api.post("/jobs", json={"gpus": 1, "epochs": 1}).json()["id"]
    train_in_background(job_id, epochs=1, pause=0).join()
    bob = {"Authorization": f"Bearer {tokens['bob']}", "Accept": "application/x-ndjson"}
    seen = [
        json.loads(line)["event"]
        for line in api.get(f"/jobs/{job_id}/events", headers=bob).text.splitlines()
    ]
    assert "epoch" in seen and "log" not in seen and seen[-1] == "end"


def test_an_id_older_than_what_is_kept_is_410_and_a_bad_one_422(api: httpx.Client) -> None:
    job_id = api.post("/jobs", json={"gpus": 0}).json()["id"]
    with get_session_factory()() as session:
        from app.core.models import Job

        session.execute(update(Job).where(Job.id == job_id).values(events_dropped_upto=50))
        session.commit()
    gone = api.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "7"})
    assert gone.status_code == 410 and "stream again" in gone.json()["detail"]
    bad = api.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "7x"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "last-event-id"]
    assert api.get("/jobs/999999/events").status_code == 404


def test_the_feed_of_all_jobs_follows_status_changes(api: httpx.Client) -> None:
    api.post("/jobs", json={"gpus": 0})  # before the feed is followed: not in it
    seen: list[Event] = []

    late: list[int] = []

    def submit_later() -> None:
        time.sleep(1.0)
        late.append(api.post("/jobs", json={"gpus": 0, "name": "late"}).json()["id"])

    started = time.monotonic()
    with api.stream("GET", "/events") as feed:
        # Submitted once the feed has answered (it starts after the newest event then), not
        # on a clock: on a busy machine the request could otherwise come after the job.
        submitter = threading.Thread(target=submit_later)
        submitter.start()
        for event in sse(feed):
            seen.append(event)
            break
    submitter.join()  # its event may come before its answer
    assert json.loads(seen[0]["data"]) == {"job_id": late[0], "status": "queued"}
    assert time.monotonic() - started < 10


def test_trainyard_watch_rides_out_an_api_restart(
    tokens: dict[str, str], db: Path, tmp_path: Path
) -> None:
    """`trainyard watch` follows the stream; the API is killed and started again mid-run;
    the command reconnects after the last event it had and prints each epoch once."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(db, database_url=get_settings().database_url)
    client_env = {
        **env,
        "TRAINYARD_URL": base,
        "TRAINYARD_TOKEN": tokens["alice"],
        "COLUMNS": "200",
    }
    with processes([["api", "--port", str(port)]], env, tmp_path / "logs1") as (first,):
        wait_healthy(base)
        job_id = httpx.post(
            f"{base}/jobs",
            json={"gpus": 1, "epochs": 6},
            headers={"Authorization": f"Bearer {tokens['alice']}"},
        ).json()["id"]
        worker = train_in_background(job_id, epochs=6, pause=0.7)
        watcher = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "watch", str(job_id)],
            env=client_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert watcher.stdout is not None
        output = []
        for line in watcher.stdout:
            output.append(line)
            if line.startswith("epoch 2/6"):
                break
        first.kill()  # the connection drops with the API
        first.wait()
    with processes([["api", "--port", str(port)]], env, tmp_path / "logs2"):
        output += watcher.stdout.readlines()  # to its end
        assert watcher.wait(timeout=60) == 0, "".join(output)
    worker.join()
    printed = [line.split()[1] for line in output if line.startswith("epoch ")]
    assert printed == [f"{n}/6" for n in range(1, 7)], "".join(output)
    assert f"job {job_id} succeeded" in "".join(output)


def test_a_hundred_streams_opening_at_once_all_open_and_others_are_served(
    api: httpx.Client,
) -> None:
    """A burst of requests larger than the connection pool (event streams opening at once)
    once stalled the API for the pool's 30 s timeout: each request held its connection
    between authentication and its route, and every thread waited for a connection."""
    job_id = api.post("/jobs", json={"gpus": 0}).json()["id"]
    count = 100

    async def burst() -> tuple[int, float]:
        opened = 0
        started = asyncio.Event()
        headers = {**api.headers, "Accept": "application/x-ndjson"}
        limits = httpx.Limits(max_connections=count + 10)
        async with httpx.AsyncClient(
            base_url=str(api.base_url), headers=headers, limits=limits, timeout=60
        ) as client:

            async def follow() -> None:
                nonlocal opened
                async with client.stream("GET", f"/jobs/{job_id}/events") as response:
                    assert response.status_code == 200
                    opened += 1
                    if opened == count:
                        started.set()
                    async for _ in response.aiter_lines():
                        pass

            tasks = [asyncio.create_task(follow()) for _ in range(count)]
            await asyncio.wait_for(started.wait(), timeout=60)
            begin = time.monotonic()
            answer = await client.get(f"/jobs/{job_id}", headers={"Accept": "application/json"})
            took = time.monotonic() - begin
            assert answer.status_code == 200
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return opened, took

    opened, took = asyncio.run(burst())
    assert opened == count
    assert took < 10  # the stall this guards against lasted the pool's 30 s timeout


def queued_jobs(owner: str, count: int) -> list[int]:
    """Ids of `count` queued one-GPU jobs of a new user `owner`."""
    from app.core.models import Job
    from app.core.users import create_user

    with get_session_factory()() as session:
        owner_id = create_user(session, owner)[0].id
        jobs = [
            Job(status=JobStatus.queued, spec={"gpus": 1}, owner_id=owner_id) for _ in range(count)
        ]
        session.add_all(jobs)
        session.commit()
        return [job.id for job in jobs]


def running_job() -> tuple[int, int]:
    """A job placed and claimed as a worker does: (its id, the run's attempt)."""
    register_test_host()
    [job_id] = queued_jobs("carol", 1)
    return job_id, place_and_claim(job_id)


def test_a_run_ending_between_the_stream_s_two_reads_still_sends_its_status(db: Path) -> None:
    """A job's stream reads the new events, then, finding none, the job, to decide whether
    to send `end`. A run whose end commits between those two statements (each sees what had
    committed when it began) must not make it send `end` with the final status event unsent:
    under load a client saw queued, placed, running, then `end`."""
    from sqlalchemy import event

    from app.api.events import _read
    from app.core import events
    from app.core.db import get_engine

    job_id, attempt = running_job()
    with get_session_factory()() as session:
        seen = events.newest_id(session)  # the client has everything up to `running`

    ended: list[bool] = []
    reader = threading.get_ident()  # _read runs here; no other thread's statement counts

    def end_the_run_after_the_events_query(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "FROM job_events" in statement and threading.get_ident() == reader and not ended:
            ended.append(True)
            with get_session_factory()() as other:
                assert lifecycle.finish(other, job_id, attempt, JobStatus.succeeded)

    event.listen(get_engine(), "after_cursor_execute", end_the_run_after_the_events_query)
    try:
        batch = _read(job_id, seen, logs=True)
    finally:
        event.remove(get_engine(), "after_cursor_execute", end_the_run_after_the_events_query)
    assert ended
    assert batch.final is None  # not yet: its status goes first
    assert [data["status"] for _, kind, data in batch.events if kind == "status"] == ["succeeded"]


def test_a_follower_who_may_not_read_the_log_is_not_held_up_by_a_long_one(db: Path) -> None:
    """A stream without log lines (its follower is neither the owner nor an admin) reads
    500 events at a time: a run's 600 log events must not hide what comes after them, nor
    end the stream without its epochs and final status."""
    from app.api.events import _read
    from app.core import events

    job_id, attempt = running_job()
    with get_session_factory()() as session:
        for n in range(600):
            events.log(session, job_id, attempt, [f"line {n}"])
        session.commit()
        record = {"epoch": 1, "loss": 1.0, "val_accuracy": 0.1}
        assert runs.record_epoch(session, job_id, attempt, record)
        assert lifecycle.finish(session, job_id, attempt, JobStatus.succeeded)
    batch = _read(job_id, 0, logs=False)
    assert batch.final is None  # its status goes first
    assert [kind for _, kind, _ in batch.events] == ["status", "status", "epoch", "status"]
    assert batch.events[-1][2]["status"] == "succeeded"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_event_committed_after_a_later_inserted_one_is_still_sent(db: Path) -> None:
    """On PostgreSQL an event's row is numbered when inserted, but two transactions may
    commit in the other order. A follower that had read the second one must still get the
    first when it commits: before events were ordered by commit, the feed skipped it (a
    script waiting for that job's status change waited forever)."""
    from app.api.events import _read
    from app.core import events

    slow_job, quick_job = queued_jobs("dave", 2)
    with get_session_factory()() as session:
        seen = events.newest_id(session)

    with get_session_factory()() as slow, get_session_factory()() as quick:
        events.status(slow, slow_job, JobStatus.cancelled, reason="slow")
        slow.flush()  # inserted first, committed last
        events.status(quick, quick_job, JobStatus.cancelled, reason="quick")
        quick.commit()
        first = _read(None, seen, logs=False)
        assert [data["job_id"] for _, _, data in first.events] == [quick_job]
        slow.commit()
    second = _read(None, first.events[-1][0], logs=False)
    assert [data["job_id"] for _, _, data in second.events] == [slow_job]
