"""The job supervisor (worker/supervisor.py) on the real database, both backends, with a fake
trainer (tests/fake_trainer.py) instead of TensorFlow: how each way a run ends becomes the
job's state, what a run records, and that no process of a run outlives it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.core import lifecycle
from app.core.config import Settings, get_settings
from app.core.db import get_session_factory, make_engine
from app.core.models import (
    Epoch,
    FailureReason,
    GpuLease,
    Host,
    Job,
    JobStatus,
    LogLine,
    User,
    utcnow,
)
from app.core.spec import JobSpec
from app.core.users import create_user
from tests.conftest import register_test_host
from tests.fake_trainer import FAKE, command, live_in_group, live_with_workdir, procs, wait_until
from worker.reconcile import reconcile
from worker.scheduler import schedule
from worker.supervisor import RunOutcome, run_job

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

HOST = "supervised-host"
GRACE = 0.5  # cancel_grace_seconds: SIGTERM, then SIGKILL
HOST_TIMEOUT = 4.0  # a run gives up on an unreachable database after half of it


# -- fixtures ------------------------------------------------------------------------------


class Reaper:
    """Stands in for a host's init process. A trainer's grandchild that outlives the trainer
    is re-parented to the nearest "subreaper", this test process, and becomes a zombie once
    killed; a real init reaps it, and so does this thread. Only zombies that lead no process
    group are reaped: trainers lead theirs and are their supervisor's to wait for."""

    PR_SET_CHILD_SUBREAPER = 36

    def __init__(self) -> None:
        self.paused = threading.Event()
        self.stop = threading.Event()
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.thread = threading.Thread(target=self._reap, name="test-reaper", daemon=True)

    def __enter__(self) -> Reaper:
        self.libc.prctl(self.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.paused.clear()
        self.stop.set()
        self.thread.join()
        self.libc.prctl(self.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

    def _reap(self) -> None:
        me = os.getpid()
        while not self.stop.wait(0.02):
            if self.paused.is_set():
                continue
            for proc in procs():
                if proc.ppid == me and proc.state == "Z" and proc.pid != proc.pgid:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(proc.pid, os.WNOHANG)


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    with Reaper() as running:
        yield running


class Runs:
    """`run_job` in background threads, as Celery's threads pool runs it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.shutdown = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-run")
        self.futures: list[Future[RunOutcome | None]] = []

    def start(
        self, settings: Settings, job_id: int, factory: Callable[[], Session] | None = None
    ) -> Future[RunOutcome | None]:
        future = self.pool.submit(
            run_job, settings, factory or get_session_factory(), job_id, self.shutdown
        )
        self.futures.append(future)
        return future

    def close(self) -> None:
        # Supervisors stop their trainers on shutdown; whatever a failed test left behind
        # (one of our fakes, in this test's data directory) is killed by its group.
        self.shutdown.set()
        for future in self.futures:
            with contextlib.suppress(Exception):
                future.result(timeout=4 * GRACE + 5)
        for proc in procs():
            if str(FAKE) in proc.argv and any(str(self.data_dir) in a for a in proc.argv):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pgid, signal.SIGKILL)
        self.pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def runs(db: Path, reaper: Reaper) -> Iterator[Runs]:
    started = Runs(db)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def owner(db: Path) -> User:
    with get_session_factory()() as session:
        return create_user(session, "alice")[0]


# -- helpers -------------------------------------------------------------------------------


def settings_for(*steps: str, **update: Any) -> Settings:
    """This host's worker settings, its trainer being the fake doing `steps`."""
    return get_settings().model_copy(
        update={
            "worker_name": HOST,
            "simulated_gpus": 2,
            "trainer_command": command(*steps),
            "cancel_grace_seconds": GRACE,
            "host_timeout_seconds": HOST_TIMEOUT,
            **update,
        }
    )


def placed_job(owner: User, gpus: int = 2, **spec_fields: Any) -> int:
    """Submit a job and place it on HOST (2 simulated GPUs) as a scheduling pass does."""
    register_test_host(HOST, gpus=2)
    with get_session_factory()() as session:
        spec = JobSpec(dataset="synthetic", epochs=2, gpus=gpus, **spec_fields)
        job_id = lifecycle.submit(session, spec, owner).id
        placed = schedule(session, get_settings())
    assert [(p.job_id, p.host, len(p.gpu_indices)) for p in placed] == [(job_id, HOST, gpus)]
    return job_id


def job(job_id: int) -> Job:
    with get_session_factory()() as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def epochs(job_id: int) -> list[tuple[int, int, float | None]]:
    with get_session_factory()() as session:
        rows = session.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch))
        return [(row.epoch, row.attempt, row.loss) for row in rows]


def leases(job_id: int) -> list[tuple[int, bool]]:
    """(GPU index, still active) of every lease the job ever had."""
    with get_session_factory()() as session:
        rows = session.scalars(
            select(GpuLease).where(GpuLease.job_id == job_id).order_by(GpuLease.gpu_index)
        )
        return [(row.gpu_index, row.released_at is None) for row in rows]


def trainer_group(job_id: int, members: int = 1) -> int:
    """The process group of the job's running trainer, once it has `members` live processes
    (the trainer and its children)."""
    workdir = get_settings().job_dir(job_id)
    trainers = wait_until(lambda: live_with_workdir(workdir), 10, f"job {job_id}'s trainer")
    assert len(trainers) == 1, trainers
    pgid = int(trainers[0].pgid)
    wait_until(lambda: len(live_in_group(pgid)) == members, 10, f"{members} trainer processes")
    return pgid


def wait_for_epoch(job_id: int, epoch: int) -> None:
    wait_until(lambda: any(e[0] == epoch for e in epochs(job_id)), 10, f"epoch {epoch} stored")


# -- how runs end --------------------------------------------------------------------------


def test_finished_run_succeeds_with_each_epoch_once_and_what_it_resolved(
    owner: User, runs: Runs
) -> None:
    job_id = placed_job(owner, gpus=2)
    settings = settings_for("started", "epoch:1", "epoch:2", "finished")
    outcome = runs.start(settings, job_id).result(timeout=20)
    assert outcome is not None
    assert (outcome.finished, outcome.last_epoch, outcome.protocol_errors) == (True, 2, [])
    done = job(job_id)
    assert (done.status, done.attempt, done.failure_reason) == (JobStatus.succeeded, 1, None)
    # Two simulated GPUs leased: the trainer was configured with two CPU replicas.
    assert done.replicas == 2
    assert done.resolved == {
        "bn_momentum": 0.9,
        "precision": "float32",
        "params": 1234,
        "global_batch": 64,
        "steps_per_epoch": 4,
    }
    assert epochs(job_id) == [(1, 1, 1.0), (2, 1, 0.5)]
    assert leases(job_id) == [(0, False), (1, False)]
    log = (settings.job_dir(job_id) / "train.log").read_text()
    assert f"=== attempt 1 on {HOST} at " in log
    # The job has ended: its checkpoints go, its log stays.
    assert not (settings.job_dir(job_id) / "checkpoints").exists()


def test_checkpoints_are_kept_when_the_spec_asks(owner: User, runs: Runs) -> None:
    job_id = placed_job(owner, gpus=1, keep_checkpoints=True)
    settings = settings_for("started", "epoch:1", "epoch:2", "failed:nan_loss", "exit:3")
    runs.start(settings, job_id).result(timeout=20)
    assert job(job_id).status == JobStatus.failed
    kept = sorted(p.name for p in (settings.job_dir(job_id) / "checkpoints").iterdir())
    assert kept == ["epoch-0001", "epoch-0002"]


LOG_TAIL = "--- last lines of train.log ---"


@pytest.mark.parametrize(
    ("steps", "reason", "message", "tail"),
    [
        pytest.param(
            ["started", "log:reading the data", "failed:user_error:gpus: 2, 1 visible", "exit:2"],
            FailureReason.user_error,
            "gpus: 2, 1 visible",
            None,  # the user's own mistake: the message alone, no log
            id="user_error",
        ),
        pytest.param(
            ["started", "epoch:1", "log:step 7: loss nan", "failed:nan_loss:loss is NaN", "exit:3"],
            FailureReason.nan_loss,
            "loss is NaN",
            "step 7: loss nan",
            id="nan_loss",
        ),
        pytest.param(
            ["started", "log:ResourceExhaustedError: OOM", "failed:oom:out of memory", "exit:4"],
            FailureReason.oom,
            "out of memory",
            "ResourceExhaustedError: OOM",
            id="oom_event",
        ),
        pytest.param(
            ["started", "epoch:1", "log:allocating 80 GiB", "kill"],
            FailureReason.killed,  # the kernel recorded no OOM kill: not called oom
            "the trainer was killed (SIGKILL) from outside Trainyard; the kernel recorded no "
            "OOM kill in this cgroup",
            "allocating 80 GiB",
            id="sigkill",
        ),
        pytest.param(
            ["started", "epoch:1", "log:still training", "term"],
            FailureReason.terminated,
            "the trainer was ended by SIGTERM from outside Trainyard (not a cancel or a worker "
            "shutdown)",
            "still training",
            id="sigterm_from_outside",
        ),
        pytest.param(
            ["started", "log:saving", "failed:disk_full:no space left on the device", "exit:5"],
            FailureReason.disk_full,
            "no space left on the device",
            "saving",
            id="disk_full",
        ),
        pytest.param(
            ["started", "log:Traceback (most recent call last):", "log:RuntimeError: x", "exit:1"],
            FailureReason.internal,
            "the trainer exited with status 1 without reporting why",
            "RuntimeError: x",
            id="crash",
        ),
        pytest.param(
            ["started", "epoch:1", "log:where is my finished event?"],
            FailureReason.internal,
            "the trainer exited with status 0 without reporting why",
            "where is my finished event?",
            id="exit_0_without_finished",
        ),
    ],
)
def test_failed_run_records_reason_and_message(
    owner: User,
    runs: Runs,
    steps: list[str],
    reason: FailureReason,
    message: str,
    tail: str | None,
) -> None:
    job_id = placed_job(owner, gpus=1)
    outcome = runs.start(settings_for(*steps), job_id).result(timeout=20)
    assert outcome is not None and not outcome.finished
    failed = job(job_id)
    assert (failed.status, failed.failure_reason) == (JobStatus.failed, reason)
    text = failed.failure_message or ""
    if tail is None:
        assert text == message
    else:
        first, marker, log = text.partition(f"\n{LOG_TAIL}\n")
        assert (first, marker) == (message, f"\n{LOG_TAIL}\n")
        assert log.splitlines()[0].startswith(f"=== attempt 1 on {HOST}")  # stderr, in order
        assert log.splitlines()[-1] == tail
    # Epochs stored before the failure stay; the GPUs are free again.
    assert [e[0] for e in epochs(job_id)] == ([1] if "epoch:1" in steps else [])
    assert leases(job_id) == [(0, False)]


def test_a_sigkill_is_oom_when_the_kernel_recorded_an_oom_kill(
    owner: User, runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cgroup's oom_kill counter (worker.procfs.oom_kills) went up while the trainer ran.
    readings = iter([3, 4])
    monkeypatch.setattr("worker.supervisor.oom_kills", lambda: next(readings))
    job_id = placed_job(owner, gpus=1)
    runs.start(settings_for("started", "kill"), job_id).result(timeout=20)
    failed = job(job_id)
    assert failed.failure_reason == FailureReason.oom
    assert (failed.failure_message or "").startswith("the trainer was killed by the kernel's OOM")


def test_a_killed_run_is_retried_from_its_checkpoint_when_set(owner: User, runs: Runs) -> None:
    job_id = placed_job(owner, gpus=1)
    settings = settings_for("started", "epoch:1", "kill", retry_killed_runs=True)
    runs.start(settings, job_id).result(timeout=20)
    requeued = job(job_id)
    assert (requeued.status, requeued.lost_runs, requeued.failure_reason) == (
        JobStatus.queued,
        1,
        None,
    )
    assert leases(job_id) == [(0, False)]


def test_the_failure_message_quotes_the_training_not_tensorflow_noise(
    owner: User, runs: Runs
) -> None:
    job_id = placed_job(owner, gpus=1)
    noise = [
        "log:2026-11-27 02:00:00.123456: I tensorflow/core/util/port.cc:153] oneDNN custom "
        "operations are on.",
        "log:I0000 00:00:1764208800.123456   42 cpu_feature_guard.cc:210] This TensorFlow "
        "binary is optimized to use available CPU instructions",
        "log:WARNING: All log messages before absl::InitializeLog() is called go to STDERR",
    ]
    steps = ["started", "log:loading digits", "log:ValueError: bad shape", *noise, "exit:1"]
    runs.start(settings_for(*steps, log_tail_lines=2), job_id).result(timeout=20)
    quoted = (job(job_id).failure_message or "").split(f"{LOG_TAIL}\n")[1].splitlines()
    assert quoted == ["loading digits", "ValueError: bad shape"]


def test_failure_message_keeps_only_the_last_log_lines(owner: User, runs: Runs) -> None:
    job_id = placed_job(owner, gpus=1)
    settings = settings_for(*[f"log:line {n}" for n in range(30)], "exit:1", log_tail_lines=5)
    runs.start(settings, job_id).result(timeout=20)
    message = job(job_id).failure_message or ""
    assert message.split(f"{LOG_TAIL}\n")[1].splitlines() == [f"line {n}" for n in range(25, 30)]


def test_lines_that_are_not_events_are_protocol_errors_not_failures(
    owner: User, runs: Runs
) -> None:
    job_id = placed_job(owner, gpus=1)
    garbage = ["Warning: printed to stdout", "{not json", '{"epoch": 3}', "[1, 2]"]
    steps = ["started", f"garbage:{garbage[0]}", "epoch:1", *[f"garbage:{g}" for g in garbage[1:]]]
    outcome = runs.start(settings_for(*steps, "epoch:2", "finished"), job_id).result(timeout=20)
    assert outcome is not None
    assert [line.strip() for line in outcome.protocol_errors] == garbage
    assert job(job_id).status == JobStatus.succeeded
    assert [e[0] for e in epochs(job_id)] == [1, 2]


def test_a_trainer_that_cannot_start_fails_the_job_and_frees_its_gpus(
    owner: User, runs: Runs, tmp_path: Path
) -> None:
    job_id = placed_job(owner, gpus=2)
    missing = tmp_path / "no-such-trainer"
    settings = settings_for("finished", trainer_command=str(missing))
    outcome = runs.start(settings, job_id).result(timeout=20)
    assert outcome is not None and not outcome.lost_ownership
    failed = job(job_id)
    assert (failed.status, failed.failure_reason) == (JobStatus.failed, FailureReason.internal)
    assert "the trainer could not be started: FileNotFoundError" in (failed.failure_message or "")
    assert str(missing) in (failed.failure_message or "")
    assert leases(job_id) == [(0, False), (1, False)]


# -- stopping a run ------------------------------------------------------------------------


def test_cancel_ends_the_whole_process_group_within_seconds(owner: User, runs: Runs) -> None:
    job_id = placed_job(owner, gpus=2)
    future = runs.start(settings_for("started", "epoch:1", "child", "hang"), job_id)
    wait_for_epoch(job_id, 1)
    pgid = trainer_group(job_id, members=2)  # the trainer and its grandchild
    with get_session_factory()() as session:
        running = session.get(Job, job_id)
        assert running is not None and lifecycle.cancel(session, running)
    asked = time.monotonic()
    outcome = future.result(timeout=15)
    # Noticed at the next heartbeat (1 s), then SIGTERM to the group: seconds, not the 15 s
    # above. 2.1 s was seen on a loaded 2-core machine with a training running beside it.
    assert time.monotonic() - asked < 8 + GRACE
    assert outcome is not None and outcome.cancelled
    assert live_in_group(pgid) == []
    cancelled = job(job_id)
    assert (cancelled.status, cancelled.failure_reason) == (
        JobStatus.cancelled,
        FailureReason.cancelled,
    )
    assert cancelled.failure_message == "cancelled on request after epoch 1"
    assert leases(job_id) == [(0, False), (1, False)]


def test_cancel_kills_a_trainer_that_ignores_sigterm(owner: User, runs: Runs) -> None:
    job_id = placed_job(owner, gpus=1)
    future = runs.start(settings_for("started", "ignore-term", "child", "hang"), job_id)
    pgid = trainer_group(job_id, members=2)
    with get_session_factory()() as session:
        running = session.get(Job, job_id)
        assert running is not None and lifecycle.cancel(session, running)
    outcome = future.result(timeout=15)
    assert outcome is not None and outcome.cancelled
    assert live_in_group(pgid) == []
    assert job(job_id).status == JobStatus.cancelled
    assert leases(job_id) == [(0, False)]


def test_processes_left_by_a_finished_trainer_are_ended(owner: User, runs: Runs) -> None:
    job_id = placed_job(owner, gpus=1)
    settings = settings_for("started", "child", "log:child started", "epoch:1", "finished")
    outcome = runs.start(settings, job_id).result(timeout=20)
    assert outcome is not None and outcome.finished
    assert job(job_id).status == JobStatus.succeeded
    log = (settings.job_dir(job_id) / "train.log").read_text()
    grandchild = int(log.split("fake trainer: grandchild ")[1].split()[0])
    assert not any(p.pid == grandchild and p.state != "Z" for p in procs())


def test_shutdown_requeues_the_job_without_counting_a_lost_run(owner: User, runs: Runs) -> None:
    job_id = placed_job(owner, gpus=2)
    future = runs.start(settings_for("started", "epoch:1", "child", "hang"), job_id)
    wait_for_epoch(job_id, 1)
    pgid = trainer_group(job_id, members=2)
    runs.shutdown.set()  # the worker begins a warm shutdown
    outcome = future.result(timeout=5 + 2 * GRACE)
    assert outcome is not None and outcome.stopped_for_shutdown
    assert live_in_group(pgid) == []
    requeued = job(job_id)
    assert (requeued.status, requeued.host, requeued.failure_reason) == (
        JobStatus.queued,
        None,
        None,
    )
    assert (requeued.attempt, requeued.lost_runs) == (1, 0)
    assert leases(job_id) == [(0, False), (1, False)]
    assert epochs(job_id) == [(1, 1, 1.0)]  # kept for the next run to resume after
    checkpoints = get_settings().job_dir(job_id) / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["epoch-0001"]  # and so is its checkpoint
    with get_session_factory()() as session:  # and it can be placed again at once
        assert [p.job_id for p in schedule(session, get_settings())] == [job_id]


class FlakyDatabase:
    """A session factory on its own engine (the real database) whose statements fail with
    OperationalError while `down` is set, as when the database server is unreachable."""

    def __init__(self) -> None:
        self.engine = make_engine(get_settings().database_url)
        self.down = threading.Event()
        self.refused: list[str] = []  # statements tried while down
        event.listen(self.engine, "before_cursor_execute", self._before_execute)
        self.factory = sessionmaker(bind=self.engine, expire_on_commit=False)

    def _before_execute(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self.down.is_set():
            self.refused.append(statement)
            raise OperationalError(statement, None, ConnectionRefusedError("database is down"))


def test_unreachable_database_stops_the_run_and_the_reconciler_requeues_it(
    owner: User, runs: Runs
) -> None:
    job_id = placed_job(owner, gpus=2)
    database = FlakyDatabase()
    # Wider than the other tests' 4 s: the run gives up half of it after its last write,
    # which leaves room for a loaded machine's delays before the bound checked below.
    host_timeout = 8.0
    try:
        settings = settings_for(
            "started", "epoch:1", "child", "hang", host_timeout_seconds=host_timeout
        )
        future = runs.start(settings, job_id, database.factory)
        wait_for_epoch(job_id, 1)
        pgid = trainer_group(job_id, members=2)
        database.down.set()
        # Once the run has had a statement refused, no write of its is still on its way.
        wait_until(lambda: database.refused, host_timeout, "the run to try the database")
        last_heard = job(job_id).heartbeat_at  # nothing of the run's is written from here on
        assert last_heard is not None
        wait_until(lambda: not live_in_group(pgid), 3 * host_timeout, "the trainer stopped")
        # Stopped before the reconciler may give the job to another run: within a host
        # timeout of its last heartbeat.
        assert utcnow() < last_heard + timedelta(seconds=host_timeout)
        database.down.clear()  # back before the run settles: it must still write nothing
        outcome = future.result(timeout=10)
        assert outcome is not None and outcome.lost_ownership
        assert database.refused, "the run never noticed the database was down"
        assert not [s for s in database.refused if "SET status" in s], database.refused
        limbo = job(job_id)
        assert (limbo.status, limbo.attempt, limbo.heartbeat_at) == (
            JobStatus.running,
            1,
            last_heard,
        )
        assert leases(job_id) == [(0, True), (1, True)]  # the reconciler's to release
    finally:
        database.down.clear()
        database.engine.dispose()

    with get_session_factory()() as session:
        reconcile(session, settings)  # its heartbeat may be fresh still: nothing happens
        silent = utcnow() - timedelta(seconds=host_timeout + 1)
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=silent))
        # Its host agent went on reporting all along (as it does once the database is back).
        session.execute(update(Host).where(Host.name == HOST).values(last_heartbeat=utcnow()))
        session.commit()
        reconcile(session, settings)
    requeued = job(job_id)
    # Its host kept heartbeating: the database was away, the host never stopped. Not a lost
    # run, so an outage cannot fail jobs as worker_lost.
    assert (requeued.status, requeued.host, requeued.attempt, requeued.lost_runs) == (
        JobStatus.queued,
        None,
        1,
        0,
    )
    assert leases(job_id) == [(0, False), (1, False)]


# -- deliveries ----------------------------------------------------------------------------


def test_second_delivery_starts_nothing(owner: User, runs: Runs) -> None:
    job_id = placed_job(owner, gpus=1)
    settings = settings_for("started", "epoch:1", "hang")
    first = runs.start(settings, job_id)
    wait_for_epoch(job_id, 1)
    trainer_group(job_id)
    # Celery delivers "run job N" again (a redelivery, a re-send): the claim refuses it.
    assert runs.start(settings, job_id).result(timeout=10) is None
    # A message for this job reaching another host's worker is refused too.
    elsewhere = settings.model_copy(update={"worker_name": "other-host"})
    assert runs.start(elsewhere, job_id).result(timeout=10) is None
    assert len(live_with_workdir(settings.job_dir(job_id))) == 1
    log = (settings.job_dir(job_id) / "train.log").read_text()
    assert log.count("=== attempt") == 1
    running = job(job_id)
    assert (running.status, running.attempt) == (JobStatus.running, 1)

    runs.shutdown.set()
    first.result(timeout=10)
    # Once the job has left `running`, a late delivery is dropped as well.
    assert runs.start(settings, job_id).result(timeout=10) is None
    assert job(job_id).status == JobStatus.queued


def test_an_unreaped_zombie_in_the_group_does_not_hang_the_supervisor(
    owner: User, runs: Runs, reaper: Reaper
) -> None:
    # As on a host whose PID 1 does not reap orphans (e.g. a container running the worker
    # as PID 1 without an init): the trainer's grandchild, killed after the trainer, stays a
    # zombie. The trainer's processes are all gone; the supervisor should settle the run.
    job_id = placed_job(owner, gpus=1)
    reaper.paused.set()
    future = runs.start(settings_for("started", "child", "hang"), job_id)
    try:
        pgid = trainer_group(job_id, members=2)
        with get_session_factory()() as session:
            running = session.get(Job, job_id)
            assert running is not None and lifecycle.cancel(session, running)
        wait_until(lambda: not live_in_group(pgid), 10, "the trainer's processes ended")
        future.result(timeout=10)  # settled with the zombie still there
    finally:
        reaper.paused.clear()  # an init reaps the zombie at last: the supervisor returns
        future.result(timeout=10)
    assert job(job_id).status == JobStatus.cancelled


# -- the log -------------------------------------------------------------------------------


def stored_lines(job_id: int) -> list[tuple[int, str]]:
    with get_session_factory()() as session:
        rows = session.execute(
            select(LogLine.attempt, LogLine.line)
            .where(LogLine.job_id == job_id)
            .order_by(LogLine.id)
        )
        return [(attempt, line) for attempt, line in rows]


def test_log_lines_reach_the_database_while_the_trainer_runs(owner: User, runs: Runs) -> None:
    job_id = placed_job(owner)
    settings = settings_for("started", "log:loading data", "log:bad\\x00byte " + "x" * 9000, "hang")
    runs.start(settings, job_id)
    # Shipped at least once a second, while the trainer still runs (it hangs here).
    wait_until(lambda: len(stored_lines(job_id)) >= 3, 20, "three stored log lines")
    lines = stored_lines(job_id)
    assert lines[0][0] == 1 and lines[0][1].startswith(f"=== attempt 1 on {HOST}")
    assert lines[1] == (1, "loading data")
    # NUL (PostgreSQL text refuses it) replaced, a runaway line cut.
    assert lines[2][1].startswith("bad\ufffdbyte xxx") and "more characters]" in lines[2][1]
    assert len(lines[2][1]) < 8300
    assert job(job_id).status == JobStatus.running  # the fixture's shutdown stops it


def test_the_log_is_served_from_the_database_bounded_per_job(
    owner: User, runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from app.core.users import create_user
    from app.main import app
    from tests.conftest import bearer

    job_id = placed_job(owner)
    settings = settings_for("started", "lines:250", "failed:internal:boom", max_log_lines=100)
    runs.start(settings, job_id).result(timeout=20)
    lines = stored_lines(job_id)  # 251 with the attempt's header: the newest 100 kept
    assert [line for _, line in lines] == [f"line {n}" for n in range(151, 251)]
    assert (job(job_id).log_lines, job(job_id).log_dropped) == (251, 151)
    # A worker with a data directory of its own: the API has no train.log, only the database.
    (settings.job_dir(job_id) / "train.log").unlink()
    with get_session_factory()() as session:
        root = create_user(session, "root", is_admin=True)[1]
    client = TestClient(app, headers=bearer(root))
    whole = client.get(f"/jobs/{job_id}/logs")
    assert whole.status_code == 200
    assert whole.text.startswith("[... 151 earlier lines dropped")
    assert whole.text.endswith("line 249\nline 250\n")
    assert client.get(f"/jobs/{job_id}/logs", params={"tail": 2}).text == "line 249\nline 250\n"
    marked = client.get(f"/jobs/{job_id}/logs", params={"tail": 500}).text
    assert marked.startswith("[... 151 earlier") and marked.count("\n") == 101


def test_a_stale_run_cannot_add_to_the_log(owner: User, db: Path) -> None:
    from worker.runs import append_log

    job_id = placed_job(owner)
    with get_session_factory()() as session:
        claim = lifecycle.claim(session, job_id, HOST)
        assert claim is not None
        assert append_log(session, job_id, claim.attempt, ["fresh"], 100)
        assert not append_log(session, job_id, claim.attempt - 1, ["stale"], 100)
    assert stored_lines(job_id) == [(1, "fresh")]


# -- files in the artifact store -----------------------------------------------------------


def test_a_job_resumes_on_another_host_from_its_stored_checkpoint(
    owner: User, runs: Runs, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.core.artifacts import artifact_store
    from app.main import app
    from tests.conftest import bearer

    job_id = placed_job(owner, gpus=2)
    first = runs.start(settings_for("started", "epoch:1", "epoch:2", "hang"), job_id)
    wait_for_epoch(job_id, 2)
    runs.shutdown.set()  # host A stops; its data directory is not seen again
    assert first.result(timeout=10) is not None
    runs.shutdown.clear()
    store = artifact_store(get_settings())
    assert [k.rsplit("/", 1)[1] for k in store.keys(f"jobs/{job_id}/")] == [
        "epoch-0001.a1.npz",
        "epoch-0002.a1.npz",
    ]
    # Host B: its own data directory, sharing only the database. Host A is gone.
    other = settings_for(
        "checkpoints",
        "started",
        "epoch:3",
        "finished",
        worker_name="host-b",
        data_dir=tmp_path / "b",
    )
    register_test_host("host-b", gpus=2)
    with get_session_factory()() as session:
        session.execute(
            update(Host)
            .where(Host.name == HOST)
            .values(last_heartbeat=utcnow() - timedelta(hours=1))
        )
        session.commit()
        assert [(p.job_id, p.host) for p in schedule(session, get_settings())] == [
            (job_id, "host-b")
        ]
    outcome = runs.start(other, job_id).result(timeout=20)
    assert outcome is not None and outcome.finished
    # Host B's trainer found host A's newest checkpoint where it looks for one.
    assert (2, "checkpoints found: ['epoch-0002.npz'] [b'fake checkpoint']") in stored_lines(job_id)
    done = job(job_id)
    assert (done.status, done.host, done.attempt) == (JobStatus.succeeded, "host-b", 2)
    # Ended: the stored checkpoints go; the model of the attempt that finished stays.
    assert store.keys(f"jobs/{job_id}/") == [f"jobs/{job_id}/model.a2.keras"]
    with get_session_factory()() as session:
        token = create_user(session, "root", is_admin=True)[1]
    response = TestClient(app, headers=bearer(token)).get(f"/jobs/{job_id}/model")
    assert response.status_code == 200 and response.content == b"fake model"


# -- a full disk ---------------------------------------------------------------------------


def test_a_full_disk_fails_the_job_naming_it_and_keeps_no_lease(
    owner: User, runs: Runs, tmp_path: Path
) -> None:
    from tests.full_disk import fill, small_tmpfs

    job_id = placed_job(owner, gpus=1)
    with small_tmpfs(tmp_path / "disk") as disk:
        fill(disk)
        settings = settings_for("started", "finished", data_dir=disk)
        runs.start(settings, job_id).result(timeout=20)
    failed = job(job_id)
    assert (failed.status, failed.failure_reason) == (JobStatus.failed, FailureReason.disk_full)
    assert str(disk / "jobs") in (failed.failure_message or "")
    assert "bytes free" in (failed.failure_message or "")
    assert leases(job_id) == [(0, False)]


@pytest.mark.parametrize("database_url", [""], ids=["sqlite"])  # PostgreSQL has its own disk
def test_the_disk_reserve_lets_a_failure_be_recorded_on_a_full_disk(
    owner: User, runs: Runs, tmp_path: Path
) -> None:
    """The embedded database lives on the data directory's disk: when a trainer fills it,
    the reserve set aside by the host agent is freed, so the failure can still be written."""
    from app.core.disk import keep_reserve, reserve_path
    from tests.full_disk import fill, small_tmpfs

    job_id = placed_job(owner, gpus=1)
    database = get_settings().data_dir / "trainyard.db"
    with small_tmpfs(tmp_path / "disk", size="40m") as disk:
        moved = disk / "trainyard.db"
        with sqlite3.connect(database) as source, sqlite3.connect(moved) as copy:
            source.backup(copy)
        engine = make_engine(f"sqlite:///{moved}")
        factory = sessionmaker(bind=engine, expire_on_commit=False)
        settings = settings_for(
            "started", "sleep:2", "failed:disk_full:no space left", "exit:5", data_dir=disk
        )
        keep_reserve(disk)
        assert reserve_path(disk).exists()
        future = runs.start(settings, job_id, factory)

        def started() -> bool:
            with factory() as session:
                return bool(session.scalar(select(Job.replicas).where(Job.id == job_id)))

        wait_until(started, 15, "the trainer's start recorded")
        fill(disk)  # while it trains: nothing can be written any more
        future.result(timeout=20)
        with factory() as session:
            failed = session.get(Job, job_id)
            assert failed is not None
            assert (failed.status, failed.failure_reason) == ("failed", "disk_full")
        assert not reserve_path(disk).exists()
        engine.dispose()
