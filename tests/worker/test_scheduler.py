"""Placement and leases on the database (both backends): order, no starvation, quotas,
foreign GPUs, all-or-nothing leases, lost hosts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core import lifecycle
from app.core.config import get_settings
from app.core.db import get_engine, get_session_factory
from app.core.models import Gpu, GpuLease, Host, Job, JobStatus, utcnow
from app.core.users import create_user
from tests.conftest import place_and_claim, register_test_host
from worker import scheduler
from worker.reconcile import reconcile
from worker.scheduler import schedule


@pytest.fixture
def owners(db: Path) -> dict[str, int]:
    with get_session_factory()() as session:
        return {name: create_user(session, name)[0].id for name in ("alice", "bob")}


def submit(owner: int | None, gpus: int, priority: int = 0) -> int:
    with get_session_factory()() as session:
        job = Job(status=JobStatus.queued, spec={"gpus": gpus}, owner_id=owner, priority=priority)
        session.add(job)
        session.commit()
        return job.id


def run_pass(**settings: Any) -> dict[int, tuple[int, ...]]:
    with get_session_factory()() as session:
        placed = schedule(session, get_settings().model_copy(update=settings))
    return {p.job_id: p.gpu_indices for p in placed}


def start_and_finish(job_id: int, host: str = "test-host") -> None:
    with get_session_factory()() as session:
        claim = lifecycle.claim(session, job_id, host)
        assert claim is not None
        assert lifecycle.finish(session, job_id, claim.attempt, JobStatus.succeeded)


def job(job_id: int) -> Job:
    with get_session_factory()() as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def running_on_test_host(owner: int, gpus: int, host_gpus: int) -> int:
    """A job of `gpus` GPUs placed on test-host (`host_gpus` GPUs) and claimed there."""
    register_test_host(gpus=host_gpus)
    job_id = submit(owner, gpus)
    place_and_claim(job_id)
    return job_id


def test_fifo_without_starvation(owners: dict[str, int]) -> None:
    """The issue's scenario: A(2), B(2), C(4), D(1) on one host with 4 GPUs."""
    register_test_host(gpus=4)
    alice = owners["alice"]
    a, b, c, d = submit(alice, 2), submit(alice, 2), submit(alice, 4), submit(alice, 1)
    assert run_pass() == {a: (0, 1), b: (2, 3)}
    assert job(c).waiting_reason == "needs 4 GPUs on one host; host test-host has 0 free"
    assert "held for job" in (job(d).waiting_reason or "")
    start_and_finish(a)
    assert run_pass() == {}  # 2 GPUs free, but C waits for 4 and D may not overtake it
    assert job(d).host is None
    start_and_finish(b)
    assert run_pass() == {c: (0, 1, 2, 3)}
    start_and_finish(c)
    assert run_pass() == {d: (0,)}


def test_priority_first_then_submission_order(owners: dict[str, int]) -> None:
    register_test_host(gpus=1)
    early = submit(owners["alice"], 1)
    urgent = submit(owners["bob"], 1, priority=5)
    assert run_pass() == {urgent: (0,)}
    assert job(early).waiting_reason == "needs 1 GPUs on one host; host test-host has 0 free"


def test_smaller_job_may_use_a_host_the_blocked_job_cannot_fit(owners: dict[str, int]) -> None:
    register_test_host("big", gpus=4)
    register_test_host("small", gpus=1)
    filler = submit(owners["alice"], 2)
    assert run_pass() == {filler: (0, 1)}
    big_job = submit(owners["alice"], 4)
    tiny = submit(owners["bob"], 1)
    placed = run_pass()
    assert big_job not in placed
    assert placed == {tiny: (0,)}
    assert job(tiny).host == "small"  # never on "big", which is held for big_job


def test_gpu_quota_makes_a_job_wait_without_blocking_others(owners: dict[str, int]) -> None:
    register_test_host(gpus=4)
    first = submit(owners["alice"], 2)
    over = submit(owners["alice"], 1)
    other = submit(owners["bob"], 1)
    assert run_pass(max_gpus_per_user=2) == {first: (0, 1), other: (2,)}
    assert job(over).waiting_reason == "owner's GPU quota: holds 2 of 2, this job needs 1"


def test_foreign_gpu_is_never_leased(owners: dict[str, int]) -> None:
    register_test_host(gpus=2)
    with get_session_factory()() as session:
        session.execute(update(Gpu).where(Gpu.index == 0).values(foreign_pids=[4242]))
        session.commit()
    one = submit(owners["alice"], 1)
    two = submit(owners["bob"], 1)
    assert run_pass() == {one: (1,)}
    assert job(two).waiting_reason == "needs 1 GPUs on one host; host test-host has 0 free"


def test_a_gpu_has_one_active_lease_at_most(owners: dict[str, int]) -> None:
    register_test_host(gpus=2)
    holder = submit(owners["alice"], 1)
    assert run_pass() == {holder: (0,)}
    other = submit(owners["bob"], 1)
    with get_session_factory()() as session:
        session.add(GpuLease(job_id=other, attempt=1, host="test-host", gpu_index=0))
        with pytest.raises(IntegrityError):
            session.commit()


def test_lease_ends_with_the_run_and_history_is_kept(owners: dict[str, int]) -> None:
    register_test_host(gpus=2)
    job_id = submit(owners["alice"], 2)
    run_pass()
    start_and_finish(job_id)
    with get_session_factory()() as session:
        leases = list(session.scalars(select(GpuLease).where(GpuLease.job_id == job_id)))
    assert sorted(lease.gpu_index for lease in leases) == [0, 1]
    assert all(lease.released_at is not None and lease.attempt == 1 for lease in leases)


def test_no_host_big_enough_explains_itself(owners: dict[str, int]) -> None:
    register_test_host(gpus=2)
    job_id = submit(owners["alice"], 3)
    assert run_pass() == {}
    assert job(job_id).waiting_reason == (
        "needs 3 GPUs on one host; the largest host test-host has 2"
    )


def silence(job_id: int, host_too: bool = True) -> None:
    """Make the job's run look silent for an hour (its supervisor died), and its host too
    unless `host_too` is False (then only the run went quiet; its host still heartbeats)."""
    with get_session_factory()() as session:
        if host_too:
            session.execute(
                update(Host)
                .where(Host.name == "test-host")
                .values(last_heartbeat=utcnow() - timedelta(seconds=3600))
            )
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=3600))
        )
        session.commit()


def test_silent_run_is_requeued_and_its_gpus_freed(owners: dict[str, int]) -> None:
    job_id = running_on_test_host(owners["alice"], 2, host_gpus=2)
    silence(job_id)
    with get_session_factory()() as session:
        reconcile(session, get_settings())
    lost = job(job_id)
    assert (lost.status, lost.host, lost.attempt, lost.lost_runs) == (JobStatus.queued, None, 1, 1)
    register_test_host(gpus=2)  # the host comes back
    assert run_pass() == {job_id: (0, 1)}  # the GPUs are free again


def test_a_silent_run_on_a_live_host_is_requeued_without_counting(
    owners: dict[str, int],
) -> None:
    # Its supervisor lost the database for a while and stopped it; the host never stopped.
    job_id = running_on_test_host(owners["alice"], 1, host_gpus=1)
    silence(job_id, host_too=False)
    with get_session_factory()() as session:
        reconcile(session, get_settings().model_copy(update={"max_lost_runs": 1}))
    requeued = job(job_id)
    assert (requeued.status, requeued.lost_runs) == (JobStatus.queued, 0)


def test_a_host_killed_with_its_run_counts_the_loss_while_it_still_looks_live(
    owners: dict[str, int],
) -> None:
    # Worker killed: the host loop happened to report a moment after the supervisor's last
    # run heartbeat, so the host is still within its timeout when the run turns silent.
    job_id = running_on_test_host(owners["alice"], 1, host_gpus=1)
    settings = get_settings()
    last_run_beat = utcnow() - timedelta(seconds=settings.host_timeout_seconds + 0.5)
    with get_session_factory()() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=last_run_beat))
        session.execute(
            update(Host)
            .where(Host.name == "test-host")
            .values(
                last_heartbeat=last_run_beat + timedelta(seconds=settings.host_timeout_seconds / 10)
            )
        )
        session.commit()
        reconcile(session, settings)
    lost = job(job_id)
    assert (lost.status, lost.lost_runs) == (JobStatus.queued, 1)


def test_a_live_run_is_left_alone(owners: dict[str, int]) -> None:
    job_id = running_on_test_host(owners["alice"], 1, host_gpus=2)
    with get_session_factory()() as session:
        reconcile(session, get_settings())
    assert job(job_id).status == JobStatus.running


def test_only_lost_runs_count_towards_max_lost_runs(owners: dict[str, int]) -> None:
    register_test_host(gpus=1)
    job_id = submit(owners["alice"], 1)
    for _ in range(3):  # three clean stops (Ctrl-C): requeued, never failed
        run_pass()
        with get_session_factory()() as session:
            claim = lifecycle.claim(session, job_id, "test-host")
            assert claim is not None and lifecycle.requeue(session, job_id, claim.attempt)
    for lost in (1, 2):
        register_test_host(gpus=1)  # up again after the last loss
        run_pass()
        with get_session_factory()() as session:
            assert lifecycle.claim(session, job_id, "test-host") is not None
        silence(job_id)
        with get_session_factory()() as session:
            reconcile(session, get_settings().model_copy(update={"max_lost_runs": 2}))
        assert job(job_id).lost_runs == lost
    failed = job(job_id)
    assert (failed.status, failed.failure_reason) == (JobStatus.failed, "worker_lost")
    assert "2 runs lost" in (failed.failure_message or "")


def test_cancel_before_the_worker_claims_frees_the_gpus(owners: dict[str, int]) -> None:
    register_test_host(gpus=2)
    job_id = submit(owners["alice"], 2)
    assert run_pass() == {job_id: (0, 1)}
    with get_session_factory()() as session:
        placed = session.get(Job, job_id)
        assert placed is not None and lifecycle.cancel(session, placed)
    assert job(job_id).status == JobStatus.cancelled
    other = submit(owners["bob"], 2)
    assert run_pass() == {other: (0, 1)}


def test_foreign_gpus_make_a_job_wait_without_holding_the_host(owners: dict[str, int]) -> None:
    register_test_host(gpus=4)
    with get_session_factory()() as session:
        session.execute(update(Gpu).where(Gpu.index == 3).values(foreign_pids=[777]))
        session.commit()
    whole = submit(owners["alice"], 4)
    small = submit(owners["bob"], 1)
    assert run_pass() == {small: (0,)}
    assert job(whole).waiting_reason == (
        "needs 4 GPUs on one host; host test-host has 1 of 4 busy with processes "
        "Trainyard did not start"
    )


@pytest.mark.parametrize("first_read", [2, scheduler.FIRST_READ])
def test_a_long_queue_gets_its_reasons_front_first_over_a_few_passes(
    owners: dict[str, int], monkeypatch: pytest.MonkeyPatch, first_read: int
) -> None:
    """A pass writes a bounded number of waiting reasons (it holds the scheduler's lock
    meanwhile); the passes after it write the rest, the front of the queue first. Whether
    the pass read those jobs (first_read) or left the database to find them."""
    monkeypatch.setattr(scheduler, "FIRST_READ", first_read)
    monkeypatch.setattr(scheduler, "REASONS_PER_PASS", 3)
    monkeypatch.setattr(scheduler, "_last_swept", None)
    register_test_host(gpus=1)
    first, *waiting = [submit(owners["alice"], 1) for _ in range(6)]
    assert run_pass() == {first: (0,)}
    reasons = [job(job_id).waiting_reason for job_id in waiting]
    full = "needs 1 GPUs on one host; host test-host has 0 free"
    held = f"{full} and is held for job {waiting[0]}, queued earlier"
    assert reasons == [full, held, held, None, None]
    run_pass()
    assert [job(job_id).waiting_reason for job_id in waiting] == [full] + [held] * 4


@pytest.mark.parametrize("first_read", [2, scheduler.FIRST_READ])
def test_reasons_far_back_are_rewritten_while_the_front_keeps_changing(
    owners: dict[str, int], monkeypatch: pytest.MonkeyPatch, first_read: int
) -> None:
    """Each placement changes every reason behind it ("held for job N"); a pass that wrote
    only the front of the queue would leave the back's reasons unwritten for as long as
    jobs keep starting."""
    monkeypatch.setattr(scheduler, "FIRST_READ", first_read)
    monkeypatch.setattr(scheduler, "REASONS_PER_PASS", 4)
    monkeypatch.setattr(scheduler, "_last_swept", None)
    register_test_host(gpus=1)
    queue = [submit(owners["alice"], 1) for _ in range(10)]
    # Four passes, each placing the next job: 4 of the 9, 8, 7 and 6 changed reasons each.
    for started in queue[:4]:
        assert run_pass() == {started: (0,)}
        start_and_finish(started)
    unwritten = [job_id for job_id in queue[4:] if job(job_id).waiting_reason is None]
    assert unwritten == []


def what_a_pass_would_do(first_read: int) -> tuple[dict[int, tuple[int, ...]], dict[int, Any]]:
    """A pass reading `first_read` jobs before it leaves the rest to the database, with every
    changed reason written, rolled back: its placements, and each job's status and reason."""
    engine = get_engine()
    with engine.connect() as connection:
        outer = connection.begin()
        if engine.dialect.name == "sqlite":  # pysqlite leaves BEGIN to the first write
            connection.exec_driver_sql("BEGIN")
        with Session(bind=connection, join_transaction_mode="create_savepoint") as session:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(scheduler, "_last_swept", None)
                patch.setattr(scheduler, "FIRST_READ", first_read)
                patch.setattr(scheduler, "REASONS_PER_PASS", 10_000)
                placed = schedule(
                    session, get_settings().model_copy(update={"max_gpus_per_user": 5})
                )
            rows = session.execute(select(Job.id, Job.status, Job.host, Job.waiting_reason))
            jobs = {job_id: (status, host, why) for job_id, status, host, why in rows}
        outer.rollback()
    return {p.job_id: p.gpu_indices for p in placed}, jobs


def queue_reads(first_read: int) -> list[str]:
    """The statements of such a pass that read queued jobs with no LIMIT."""
    issued: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "ORDER BY jobs.priority DESC" in statement and "LIMIT" not in statement:
            issued.append(statement)

    event.listen(get_engine(), "before_cursor_execute", record)
    try:
        what_a_pass_would_do(first_read)
    finally:
        event.remove(get_engine(), "before_cursor_execute", record)
    return issued


def test_a_pass_that_reads_only_the_front_of_the_queue_decides_as_one_that_reads_it_all(
    owners: dict[str, int],
) -> None:
    """Past the jobs a pass reads (3 here), the database finds the changed reasons (by GPU
    size, GPU quota of an owner or of no owner, CPU slots, GPUs in foreign hands) and the
    CPU jobs that can start: the same placements and reasons as a pass that reads every
    job, state after state."""
    alice, bob = owners["alice"], owners["bob"]
    register_test_host("big", gpus=4)
    register_test_host("small", gpus=2)
    urgent = submit(None, 2, priority=5)  # considered first: fits the small host best
    big, held_for = submit(alice, 4), submit(None, 1)  # then the big one; both are full
    waiting = {  # further back, what each waits for
        submit(bob, 1): "needs 1 GPUs on one host; host small has 0 free and is held for job "
        f"{held_for}, queued earlier",
        submit(alice, 2): "owner's GPU quota: holds 4 of 5, this job needs 2",
        (cpu := submit(bob, 0)): None,  # placed: each host has a free CPU slot
        submit(bob, 6): "owner's GPU quota: holds 0 of 5, this job needs 6",
        (cpu_2 := submit(bob, 0)): None,
        (cpu_3 := submit(bob, 0)): "waits for a CPU slot",
        submit(None, 5): "owner's GPU quota: holds 2 of 5, this job needs 5",
        submit(bob, 3): "needs 3 GPUs on one host; host big has 0 free and is held for job "
        f"{held_for}, queued earlier",
        submit(bob, 5): "needs 5 GPUs on one host; the largest host big has 4",
        (four := submit(bob, 4)): "needs 4 GPUs on one host; host big has 0 free and is held "
        f"for job {held_for}, queued earlier",
        (cpu_4 := submit(bob, 0)): "waits for a CPU slot",
    }
    partial, full = what_a_pass_would_do(first_read=3), what_a_pass_would_do(10_000)
    assert partial == full
    assert queue_reads(first_read=3) == []  # it did leave the rest to the database
    placed, jobs = full
    assert placed == {urgent: (0, 1), big: (0, 1, 2, 3), cpu: (), cpu_2: ()}
    assert {job_id: jobs[job_id][2] for job_id in waiting} == waiting
    # The next state: the passes have written those reasons; a CPU slot far back frees up.
    run_pass(max_gpus_per_user=5)
    start_and_finish(cpu, host="big")
    partial, full = what_a_pass_would_do(first_read=3), what_a_pass_would_do(10_000)
    assert partial == full
    assert queue_reads(first_read=3) == []
    placed, jobs = full
    assert placed == {cpu_3: ()}
    assert jobs[cpu_4][2] == "waits for a CPU slot"
    # Then a process Trainyard did not start takes a GPU of the big host.
    run_pass(max_gpus_per_user=5)
    with get_session_factory()() as session:
        session.execute(
            update(Gpu).where(Gpu.host == "big", Gpu.index == 3).values(foreign_pids=[4242])
        )
        session.commit()
    partial, full = what_a_pass_would_do(first_read=3), what_a_pass_would_do(10_000)
    assert partial == full
    assert queue_reads(first_read=3) == []
    placed, jobs = full
    assert placed == {}
    assert jobs[four][2] == (
        "needs 4 GPUs on one host; host big has 1 of 4 busy with processes Trainyard did not start"
    )


def test_with_no_gpu_host_up_a_pass_that_reads_the_front_decides_as_one_that_reads_all(
    owners: dict[str, int],
) -> None:
    """No host up, then only a host without GPUs: every GPU job waits for the same reason
    (in SQL, a CASE with no size steps), and CPU jobs further back take the CPU slot."""
    bob = owners["bob"]
    queue = [submit(bob, 1), submit(bob, 2), submit(bob, 0), submit(bob, 4), submit(bob, 0)]
    for host in (None, "cpu-box"):
        if host is not None:
            register_test_host(host, gpus=0)
        partial, full = what_a_pass_would_do(first_read=2), what_a_pass_would_do(10_000)
        assert partial == full
        assert queue_reads(first_read=2) == []
    placed, jobs = full
    assert placed == {queue[2]: ()}
    assert jobs[queue[3]][2] == "needs 4 GPUs on one host; the largest host cpu-box has 0"
    assert jobs[queue[4]][2] == "waits for a CPU slot"


def test_a_cpu_slot_far_back_goes_to_the_next_cpu_job_when_a_cancel_wins_the_first(
    owners: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass finds the first CPU jobs past the front; one of them is cancelled before the
    pass places it. The pass loses that race (its conditional UPDATE changes nothing) and
    gives the slot to the next CPU job instead of leaving it empty for a second."""
    bob = owners["bob"]
    register_test_host("small", gpus=1)  # too small for the front: it settles at once
    submit(bob, 2), submit(bob, 2)
    first_cpu, second_cpu = submit(bob, 0), submit(bob, 0)
    cancelled: list[int] = []

    def cancel_after_the_search(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if cancelled or "gpus = 0" not in statement or "LIMIT" not in statement:
            return
        with get_session_factory()() as other:  # a user's cancel, in its own transaction
            found = other.get(Job, first_cpu)
            assert found is not None and lifecycle.cancel(other, found)
        cancelled.append(first_cpu)

    monkeypatch.setattr(scheduler, "FIRST_READ", 2)
    event.listen(get_engine(), "after_cursor_execute", cancel_after_the_search)
    try:
        placed = run_pass()
    finally:
        event.remove(get_engine(), "after_cursor_execute", cancel_after_the_search)
    assert cancelled == [first_cpu]  # the search far back ran, and the cancel came after it
    assert placed == {second_cpu: ()}
    assert job(first_cpu).status == JobStatus.cancelled
    assert job(second_cpu).host == "small"


def test_a_front_that_does_not_settle_makes_the_pass_read_the_rest(
    owners: dict[str, int],
) -> None:
    """The small host is held for nobody after the front (two 4-GPU jobs that only the big
    host fits) and a job further back fits it: the pass reads on, and places it. With only
    jobs too large for it further back, the front settles and the rest is left to the
    database."""
    alice, bob = owners["alice"], owners["bob"]  # each under the GPU quota of 5
    register_test_host("big", gpus=4)
    register_test_host("small", gpus=2)
    front = [submit(alice, 4), submit(bob, 4)]
    too_large = [submit(bob, 3), submit(bob, 4)]
    partial, full = what_a_pass_would_do(first_read=2), what_a_pass_would_do(10_000)
    assert partial == full
    assert queue_reads(first_read=2) == []  # settled: the small host fits no queued job
    assert full[0] == {front[0]: (0, 1, 2, 3)}
    assert full[1][too_large[0]][2] == (
        f"needs 3 GPUs on one host; host big has 0 free and is held for job {front[1]}, "
        "queued earlier"
    )
    fits_small = submit(bob, 1)
    partial, full = what_a_pass_would_do(first_read=2), what_a_pass_would_do(10_000)
    assert partial == full
    assert queue_reads(first_read=2) != []  # it read the rest of the queue
    assert full[0] == {front[0]: (0, 1, 2, 3), fits_small: (0,)}
