"""The host agent's passes (worker/host_agent.py), called one at a time, on the real database
(both backends) and a real Celery app on the embedded filesystem broker: registration,
heartbeat, placement with its "run job N" message, repairs, and orphaned trainers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import delete, select, update

from app.core import lifecycle
from app.core.config import get_settings
from app.core.db import get_session_factory
from app.core.models import Gpu, GpuLease, Host, Job, JobStatus, User, utcnow
from app.core.spec import JobSpec
from app.core.users import create_user
from tests.conftest import register_test_host
from tests.fake_trainer import FAKE, live_in_group, wait_until
from worker.broker import RUN_JOB_TASK, make_celery
from worker.host_agent import HostAgent
from worker.inventory import host_queue, live_namesake
from worker.procfs import boot_time

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

HOST = "agent-host"
HOUR = timedelta(hours=1)


@pytest.fixture
def owner(db: Path) -> User:
    with get_session_factory()() as session:
        return create_user(session, "alice")[0]


@pytest.fixture
def celery(db: Path) -> Celery:
    """A real Celery app on the embedded filesystem broker, under this test's data dir."""
    return make_celery(get_settings())


def agent_for(celery: Celery, **update: Any) -> HostAgent:
    settings = get_settings().model_copy(
        update={"worker_name": HOST, "simulated_gpus": 2, **update}
    )
    return HostAgent(settings, get_session_factory(), celery, threading.Event())


def sent(celery: Celery, queue: str) -> list[int]:
    """Consume every message waiting in `queue`: the job ids of the "run job N" tasks, sorted
    (the filesystem transport keeps no order within a millisecond)."""
    job_ids = []
    with celery.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue, no_ack=True)
        try:
            while True:
                message = simple.get_nowait()
                assert message.headers["task"] == RUN_JOB_TASK
                args, _kwargs, _embed = message.payload
                job_ids.append(int(args[0]))
        except Empty:
            pass
        finally:
            simple.close()
    return sorted(job_ids)


def submit(owner: User, gpus: int) -> int:
    with get_session_factory()() as session:
        return lifecycle.submit(session, JobSpec(dataset="synthetic", gpus=gpus), owner).id


def job(job_id: int) -> Job:
    with get_session_factory()() as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def leases(job_id: int) -> list[tuple[str, int, bool]]:
    """(host, GPU index, still active) of every lease the job ever had."""
    with get_session_factory()() as session:
        rows = session.scalars(
            select(GpuLease).where(GpuLease.job_id == job_id).order_by(GpuLease.id)
        )
        return [(row.host, row.gpu_index, row.released_at is None) for row in rows]


def host(name: str = HOST) -> Host | None:
    with get_session_factory()() as session:
        found = session.get(Host, name)
        if found is not None:
            found.gpus  # noqa: B018  # loaded while the session is open
        return found


def silence_host(name: str) -> None:
    with get_session_factory()() as session:
        session.execute(
            update(Host).where(Host.name == name).values(last_heartbeat=utcnow() - HOUR)
        )
        session.commit()


# -- registration and heartbeat ------------------------------------------------------------


def test_register_creates_the_host_and_its_gpus(celery: Celery) -> None:
    agent = agent_for(celery, simulated_gpus=2, cpu_job_slots=3)
    agent.register()
    registered = host()
    assert registered is not None
    assert registered.queue == host_queue(agent.settings)
    assert (registered.simulated, registered.gpu_source, registered.cpu_slots) == (
        True,
        "simulated",
        3,
    )
    assert [(g.index, g.uuid, g.foreign_pids) for g in registered.gpus] == [
        (0, "SIM-0", []),
        (1, "SIM-1", []),
    ]
    # A restart with fewer GPUs (one failed, or CUDA_VISIBLE_DEVICES changed): replaced.
    agent_for(celery, simulated_gpus=1).register()
    again = host()
    assert again is not None and [g.index for g in again.gpus] == [0]


def test_heartbeat_keeps_the_host_alive_and_re_registers_a_removed_one(celery: Celery) -> None:
    agent = agent_for(celery)
    agent.register()
    silence_host(HOST)
    agent.heartbeat()
    alive = host()
    assert alive is not None and utcnow() - alive.last_heartbeat < timedelta(seconds=30)
    # Simulated GPUs run no process of anyone: never marked foreign.
    assert [g.foreign_pids for g in alive.gpus] == [[], []]
    # An operator removed the host's row: the next heartbeat brings it back, GPUs too.
    with get_session_factory()() as session:
        session.execute(delete(Gpu).where(Gpu.host == HOST))
        session.execute(delete(Host).where(Host.name == HOST))
        session.commit()
    agent.heartbeat()
    back = host()
    assert back is not None and [g.index for g in back.gpus] == [0, 1]
    assert back.queue == host_queue(agent.settings)


# -- scheduling passes ---------------------------------------------------------------------


def test_schedule_once_places_jobs_and_sends_them_to_the_hosts_queue(
    owner: User, celery: Celery
) -> None:
    agent = agent_for(celery)
    agent.register()
    two_gpus, cpu_only, waits = submit(owner, 2), submit(owner, 0), submit(owner, 1)
    agent.schedule_once()
    assert sent(celery, host_queue(agent.settings)) == [two_gpus, cpu_only]
    for job_id in (two_gpus, cpu_only):
        assert (job(job_id).status, job(job_id).host) == (JobStatus.placed, HOST)
    assert leases(two_gpus) == [(HOST, 0, True), (HOST, 1, True)]
    assert leases(cpu_only) == []
    assert job(waits).status == JobStatus.queued  # both GPUs are leased
    # Nothing new, nothing overdue: the next pass sends nothing.
    agent.schedule_once()
    assert sent(celery, host_queue(agent.settings)) == []
    # The pass's duration reaches the database with the next heartbeat (GET /metrics).
    agent.heartbeat()
    reported = host()
    assert reported is not None and 0 < (reported.last_pass_seconds or 0) < 30


def test_placed_job_of_a_silent_host_goes_back_to_the_queue(owner: User, celery: Celery) -> None:
    register_test_host("silent-host", gpus=2)
    agent = agent_for(celery, simulated_gpus=1)
    agent.register()
    job_id = submit(owner, 2)
    agent.schedule_once()  # only silent-host has 2 GPUs
    silent_queue = host_queue(agent.settings.model_copy(update={"worker_name": "silent-host"}))
    assert sent(celery, silent_queue) == [job_id]
    assert job(job_id).host == "silent-host"

    silence_host("silent-host")  # its worker died before it claimed the job
    agent.schedule_once()
    back = job(job_id)
    assert (back.status, back.host, back.placed_at, back.attempt) == (
        JobStatus.queued,
        None,
        None,
        0,
    )
    assert leases(job_id) == [("silent-host", 0, False), ("silent-host", 1, False)]
    assert "needs 2 GPUs" in (back.waiting_reason or "")  # agent-host has 1
    assert sent(celery, host_queue(agent.settings)) == []

    register_test_host("silent-host", gpus=2)  # its worker is back: placed there anew
    agent.schedule_once()
    assert sent(celery, silent_queue) == [job_id]
    assert [lease for lease in leases(job_id) if lease[2]] == [
        ("silent-host", 0, True),
        ("silent-host", 1, True),
    ]


def test_unclaimed_placement_is_sent_again_after_the_dispatch_timeout(
    owner: User, celery: Celery
) -> None:
    agent = agent_for(celery, dispatch_timeout_seconds=60)
    agent.register()
    job_id = submit(owner, 1)
    agent.schedule_once()
    queue = host_queue(agent.settings)
    assert sent(celery, queue) == [job_id]

    with get_session_factory()() as session:  # the message was lost; a minute passes
        session.execute(update(Job).where(Job.id == job_id).values(placed_at=utcnow() - HOUR))
        session.commit()
    agent.schedule_once()
    assert sent(celery, queue) == [job_id]
    resent = job(job_id)
    assert (resent.status, resent.host) == (JobStatus.placed, HOST)
    assert resent.placed_at is not None and utcnow() - resent.placed_at < timedelta(seconds=30)
    assert leases(job_id) == [(HOST, 0, True)]  # the same lease, not a second one
    # The clock starts again: not sent a third time at once.
    agent.schedule_once()
    assert sent(celery, queue) == []
    # Once claimed, it is never sent again, however long ago it was placed.
    with get_session_factory()() as session:
        assert lifecycle.claim(session, job_id, HOST) is not None
        session.execute(update(Job).where(Job.id == job_id).values(placed_at=utcnow() - HOUR))
        session.commit()
    agent.schedule_once()
    assert sent(celery, queue) == []


# -- orphaned trainers ---------------------------------------------------------------------


@pytest.fixture
def orphans() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Fake trainers left running, as by a worker that died; killed at the end regardless."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_orphan(started: list[subprocess.Popen[bytes]], workdir: Path) -> int:
    """A trainer for `workdir` with a grandchild, in a session of its own (its supervisor is
    gone); returns its process group once both run."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            sys.executable,
            str(FAKE),
            "--steps",
            "child",
            "hang",
            "--json",
            "--workdir",
            str(workdir),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
        start_new_session=True,
    )
    started.append(process)
    wait_until(lambda: len(live_in_group(process.pid)) == 2, 10, "the orphan and its child")
    return process.pid


def running_here(agent: HostAgent, owner: User) -> int:
    """A 1-GPU job placed on this host and claimed by a run whose worker then died."""
    job_id = submit(owner, 1)
    agent.schedule_once()
    assert sent(agent.celery, host_queue(agent.settings)) == [job_id]
    with get_session_factory()() as session:
        assert lifecycle.claim(session, job_id, HOST) is not None
    return job_id


def test_register_kills_orphaned_trainers_and_requeues_their_jobs(
    owner: User, celery: Celery, orphans: list[subprocess.Popen[bytes]]
) -> None:
    agent = agent_for(celery)
    agent.register()
    job_id = running_here(agent, owner)
    orphan = start_orphan(orphans, agent.settings.job_dir(job_id))
    # A trainer in a folder of a job that does not run here is none of this worker's.
    bystander = start_orphan(orphans, agent.settings.job_dir(job_id + 1000))

    agent_for(celery).register()  # the worker restarts
    assert wait_until(lambda: not live_in_group(orphan), 5, "the orphan's group killed") is True
    assert len(live_in_group(bystander)) == 2
    requeued = job(job_id)
    # The worker process died, not the machine: not a lost run.
    assert (requeued.status, requeued.host, requeued.lost_runs, requeued.failure_reason) == (
        JobStatus.queued,
        None,
        0,
        None,
    )
    assert leases(job_id) == [(HOST, 0, False)]


def before_boot(job_id: int) -> None:
    """Date the run's last heartbeat before this machine's boot, as after a power cut."""
    booted = boot_time()
    assert booted is not None
    with get_session_factory()() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(heartbeat_at=datetime.fromtimestamp(booted - 60, UTC))
        )
        session.commit()


def test_job_fails_as_worker_lost_after_max_lost_runs(
    owner: User, celery: Celery, orphans: list[subprocess.Popen[bytes]]
) -> None:
    agent = agent_for(celery, max_lost_runs=2)
    agent.register()
    job_id = running_here(agent, owner)
    for lost in (1, 2):
        if lost == 2:  # placed and claimed again after the first loss
            agent.schedule_once()
            assert sent(celery, host_queue(agent.settings)) == [job_id]
            with get_session_factory()() as session:
                assert lifecycle.claim(session, job_id, HOST) is not None
        orphan = start_orphan(orphans, agent.settings.job_dir(job_id))
        before_boot(job_id)  # the machine went down with the run, and came back
        agent.register()
        wait_until(lambda pgid=orphan: not live_in_group(pgid), 5, "the orphan killed")
        assert job(job_id).lost_runs == lost
    failed = job(job_id)
    assert (failed.status, failed.failure_reason, failed.attempt) == (
        JobStatus.failed,
        "worker_lost",
        2,
    )
    assert f"worker on {HOST} restarted after the machine rebooted; 2 runs lost" in (
        failed.failure_message or ""
    )
    assert leases(job_id) == [(HOST, 0, False), (HOST, 0, False)]
    agent.schedule_once()  # a failed job is never placed again
    assert sent(celery, host_queue(agent.settings)) == []


def test_a_namesake_is_seen_live_when_passes_are_further_apart_than_heartbeats(
    celery: Celery,
) -> None:
    # The agent heartbeats only at a pass, a second apart here: a watch of two heartbeat
    # periods (0.7 s) begun just after a heartbeat would end before the next one.
    agent = agent_for(celery, heartbeat_seconds=0.1, schedule_seconds=1.0)
    agent.start()
    try:

        def last_heartbeat() -> datetime | None:
            with get_session_factory()() as session:
                return session.scalar(select(Host.last_heartbeat).where(Host.name == HOST))

        first = wait_until(last_heartbeat, 10, "the agent to register")
        wait_until(lambda: last_heartbeat() != first, 10, "the agent's next heartbeat")
        why = live_namesake(get_session_factory(), agent.settings)
    finally:
        agent.stop.set()
        agent.join(timeout=10)
    assert why is not None and f"a live worker already runs as host {HOST!r}" in why
