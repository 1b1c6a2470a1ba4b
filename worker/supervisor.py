"""Runs one claimed job: the trainer as a child process, its events into the database.

The trainer (`python -m worker.training`) runs in its own process group so that a cancel
or a shutdown can end it and everything it started; it reads our end of a pipe on stdin
and exits if we die, so it never outlives its supervisor. It speaks one JSON object per
line on stdout; its stderr is the job's log, shipped to the database (job_log_lines) at
least once a second and kept in the job folder's `train.log` too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.core import lifecycle
from app.core.artifacts import artifact_store
from app.core.config import Settings
from app.core.disk import disk_full_message, is_disk_full, release_reserve
from app.core.logs import training_tail
from app.core.models import Architecture, Dataset, FailureReason, JobStatus
from worker import runs
from worker.procfs import group_alive, oom_kills
from worker.run_files import (
    cached_architecture,
    cached_dataset,
    drop_checkpoints,
    restore_checkpoint,
    store_checkpoint,
    store_results,
)
from worker.trainer_config import leased_devices, trainer_config

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
# How SQLite and PostgreSQL say that their disk is full.
_NO_SPACE = re.compile(r"disk is full|No space left on device|could not extend file", re.I)
# Log lines go to the database at least this often, or sooner when this many are waiting.
LOG_SHIP_SECONDS = 1.0
LOG_SHIP_LINES = 2000
_EOF = object()

# Process groups of the trainers this worker runs: processes in them are ours, any other
# process on a GPU is foreign (worker.gpus.foreign_pids).
TRAINER_PGIDS: set[int] = set()


class DatabaseUnreachable(RuntimeError):
    """A write of this run kept failing for longer than the run may go unheard."""


@dataclass
class RunOutcome:
    """What the trainer said and did, gathered while it runs."""

    finished: bool = False
    failure: dict[str, Any] | None = None
    cancelled: bool = False
    stopped_for_shutdown: bool = False
    lost_ownership: bool = False
    last_epoch: int = 0
    protocol_errors: list[str] = field(default_factory=list)


def trainer_command(settings: Settings, config_path: Path, workdir: Path) -> list[str]:
    """The trainer's command line; `--workdir <job folder>` also marks its processes as this
    job's (worker.procfs.trainers_in)."""
    return [
        *settings.trainer_argv(),
        "--json",
        "--exit-on-stdin-eof",
        "--config",
        str(config_path),
        "--workdir",
        str(workdir),
    ]


# The worker's own connection settings, which a trainer never needs: it talks to the
# supervisor through its pipes only, and may run code paths (a dataset, a library) that
# should not see a database password.
_WITHHELD = ("TRAINYARD_", "PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE")


def trainer_environment(settings: Settings) -> dict[str, str]:
    """The worker's environment without its credentials, plus the data directory (where a
    trainer finds CIFAR-10's archive on an offline host)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_WITHHELD)}
    env["TRAINYARD_DATA_DIR"] = str(settings.data_dir)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    return env


def _read_lines(stream: IO[str], lines: queue.Queue[object]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(_EOF)


class LogShipper:
    """Collects the trainer's stderr lines (from a reader thread) for batched writes; each
    line also goes to the job folder's train.log as it comes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: list[str] = []
        self.lock = threading.Lock()
        self.last_shipped = time.monotonic()
        self.reader: threading.Thread | None = None

    def add(self, line: str) -> None:
        with self.lock:
            self.pending.append(line)

    def follow(self, stream: IO[str]) -> None:
        def read() -> None:
            copy: IO[str] | None = None
            with contextlib.suppress(OSError):
                copy = self.path.open("a")
            for line in stream:
                self.add(line)
                if copy is not None:
                    try:
                        copy.write(line)
                        copy.flush()
                    except OSError:  # a full disk: the copy stops, the reading never may
                        with contextlib.suppress(OSError):
                            copy.close()
                        copy = None
            if copy is not None:
                with contextlib.suppress(OSError):
                    copy.close()

        self.reader = threading.Thread(target=read, name="trainer-log", daemon=True)
        self.reader.start()

    def due(self) -> bool:
        with self.lock:
            waiting = len(self.pending)
        return waiting >= LOG_SHIP_LINES or (
            waiting > 0 and time.monotonic() - self.last_shipped >= LOG_SHIP_SECONDS
        )

    def take(self) -> list[str]:
        with self.lock:
            batch, self.pending = self.pending, []
        self.last_shipped = time.monotonic()
        return batch


def end_process_group(process: subprocess.Popen[str], grace_seconds: float) -> None:
    """SIGTERM the trainer's process group, SIGKILL it once `grace_seconds` have passed, and
    return only once no live process of the group is left (zombies do not count: see
    worker.procfs.group_alive)."""
    pgid = process.pid  # start_new_session: the child leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    killed = False
    while True:
        process.poll()  # reap the leader so that it does not linger as a zombie
        if not group_alive(pgid):
            return
        if not killed and time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            killed = True
        time.sleep(0.05)


class JobSupervisor:
    """Supervises one attempt of one job; `run()` returns once the job is settled."""

    def __init__(
        self,
        settings: Settings,
        session_factory: Callable[[], Session],
        claim: lifecycle.Claim,
        shutdown: threading.Event,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.claim = claim
        self.shutdown = shutdown
        self.workdir = settings.job_dir(claim.job_id)
        self.log_path = self.workdir / "train.log"
        self.log = LogShipper(self.log_path)
        self.store = artifact_store(settings, session_factory)
        self.oom_kills_before: int | None = None
        self.outcome = RunOutcome()
        # When the database last took a write of this run (the claim, just now): the
        # reconciler counts a whole host timeout of silence from the last one.
        self.last_written = time.monotonic()

    # -- database, one short session per write --------------------------------------------
    def _db(self, write: Callable[..., Any], *args: Any) -> Any:
        """Run one fenced write, retrying while the database is briefly unavailable (locked,
        restarting). Half a host timeout after the last write that went through it gives up
        with DatabaseUnreachable: the run must then stop itself (within a quarter host
        timeout more, see `run`) before the reconciler, which waits a whole host timeout of
        silence, gives the job to another run."""

        def fenced() -> Any:
            with self.session_factory() as session:
                return write(session, self.claim.job_id, self.claim.attempt, *args)

        return self._retrying(fenced)

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """`call()` (database work: a write, a read, an artifact moved in or out), retried
        as `_db` says."""
        deadline = self.last_written + self.settings.host_timeout_seconds / 2
        delay = 0.1
        while True:
            try:
                result = call()
                self.last_written = time.monotonic()
                return result
            except OperationalError as error:
                if _NO_SPACE.search(str(error)) and release_reserve(self.settings.data_dir):
                    log.error("job %s: the disk is full; its reserve was freed", self.claim.job_id)
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnreachable(str(error).splitlines()[0]) from error
                log.warning("job %s: database write failed, retrying: %s", self.claim.job_id, error)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def run(self) -> RunOutcome:
        try:
            process = self._start()
        except Exception as error:  # a bad trainer command, an unwritable job folder, ...
            log.exception("job %s: the trainer could not be started", self.claim.job_id)
            reason = FailureReason.internal
            message = f"the trainer could not be started: {type(error).__name__}: {error}"
            if is_disk_full(error):
                reason, message = FailureReason.disk_full, disk_full_message(error, self.workdir)
                release_reserve(self.settings.data_dir)  # room to record it
            try:
                self._db(lifecycle.finish, JobStatus.failed, reason, message)
            except DatabaseUnreachable:
                self.outcome.lost_ownership = True  # the reconciler requeues it
            return self.outcome
        grace = self.settings.cancel_grace_seconds
        TRAINER_PGIDS.add(process.pid)
        try:
            self._follow(process)
        except DatabaseUnreachable as error:
            # Ownership can no longer be proven: stop, write nothing; the reconciler requeues
            # the job once its heartbeat is stale, and the next run resumes it. The trainer
            # must be gone before then, so its grace is cut to a quarter host timeout.
            log.error("job %s: stopping, database unreachable: %s", self.claim.job_id, error)
            self.outcome.lost_ownership = True
            grace = min(grace, self.settings.host_timeout_seconds / 4)
        finally:
            # Whatever happened above, no process of this run survives it.
            end_process_group(process, grace)
            if process.stdin:
                process.stdin.close()
            TRAINER_PGIDS.discard(process.pid)
            self._ship_last_lines()
        try:
            self._settle(process.returncode)
        except DatabaseUnreachable as error:
            log.error(
                "job %s: result not recorded (%s); it will be rerun", self.claim.job_id, error
            )
        return self.outcome

    def _start(self) -> subprocess.Popen[str]:
        """Write the trainer's config and start it in its own process group."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = trainer_config(self.claim.spec)
        if isinstance(self.claim.spec.get("dataset"), int):
            config["dataset"] = str(self._retrying(self._dataset_file))
        if isinstance(self.claim.spec.get("model"), int):
            config["model"] = str(self._retrying(self._architecture_file))
        # Resuming on another host than the last run's: its newest stored checkpoint.
        job_id, folder = self.claim.job_id, self.workdir / "checkpoints"
        self._retrying(lambda: restore_checkpoint(self.store, job_id, folder))
        env = trainer_environment(self.settings)
        devices = self._db(leased_devices, self.settings)  # a read, retried as the writes
        config.update(devices.config)
        env.update(devices.env)
        config_path = self.workdir / "config.json"
        config_path.write_text(json.dumps(config, indent=2))
        header = (
            f"=== attempt {self.claim.attempt} on {self.settings.worker_name} "
            f"at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ===\n"
        )
        with self.log_path.open("a") as copy:
            copy.write(header)
        self.log.add(header)
        self.oom_kills_before = oom_kills()
        process = subprocess.Popen(
            trainer_command(self.settings, config_path, self.workdir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",  # a trainer's bytes are not ours to trust
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        assert process.stderr is not None
        self.log.follow(process.stderr)
        return process

    def _oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this cgroup since the trainer
        started (the counter is the cgroup's: a concurrent trainer's OOM kill counts too)."""
        now = oom_kills()
        return now is not None and self.oom_kills_before is not None and now > self.oom_kills_before

    def _dataset_file(self) -> Path:
        """The uploaded dataset's file on this host: from the store, cached by content hash
        (uploads from before the store: the file in the data directory, as before)."""
        dataset_id = int(self.claim.spec["dataset"])
        with self.session_factory() as session:
            dataset = session.get(Dataset, dataset_id)
            sha256 = dataset.sha256 if dataset is not None else None
        if sha256 is None:
            return self.settings.dataset_path(dataset_id)
        return cached_dataset(self.store, self.settings, sha256)

    def _architecture_file(self) -> Path:
        """The uploaded architecture's file on this host, fetched from the store and cached
        by content hash (which also names it in the run's checkpoints)."""
        with self.session_factory() as session:
            found = session.get(Architecture, int(self.claim.spec["model"]))
            if found is None:  # deletion waits for active jobs; the trainer says it is gone
                return self.settings.datasets_dir / "cache" / "deleted-architecture.keras"
            sha256, kind = found.sha256, found.kind
        return cached_architecture(self.store, self.settings, sha256, kind)

    def _ship_logs(self) -> None:
        batch = self.log.take()
        if batch:
            self._db(runs.append_log, batch, self.settings.max_log_lines)

    def _ship_last_lines(self) -> None:
        """After the trainer is gone: what it wrote last (often why it failed) is stored
        before the run settles. Skipped when the database is what failed."""
        if self.log.reader is not None:
            self.log.reader.join(timeout=5)
        if self.outcome.lost_ownership:
            return
        try:
            self._ship_logs()
        except DatabaseUnreachable as error:
            log.warning("job %s: last log lines not stored: %s", self.claim.job_id, error)

    def _follow(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        lines: queue.Queue[object] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
        reader.start()
        next_heartbeat = 0.0
        while True:
            try:
                line = lines.get(timeout=0.25)
            except queue.Empty:
                line = None
            if line is _EOF:
                process.wait()
                return
            if isinstance(line, str) and line.strip():
                self._on_line(line)
            if self.log.due():
                self._ship_logs()
            if self.shutdown.is_set():
                self.outcome.stopped_for_shutdown = True
                return
            if time.monotonic() >= next_heartbeat:
                owned, cancel = self._db(runs.heartbeat)
                next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
                if not owned:
                    self.outcome.lost_ownership = True
                    return
                if cancel:
                    self.outcome.cancelled = True
                    return

    def _on_line(self, line: str) -> None:
        try:
            event = json.loads(line)
            kind = event["event"]
        except (ValueError, KeyError, TypeError):
            self.outcome.protocol_errors.append(line[:200])
            log.warning("job %s: not an event: %r", self.claim.job_id, line[:200])
            return
        if kind == "started":
            self._db(runs.record_started, event)
        elif kind == "checkpoint":
            # Stored before its epoch is recorded: a recorded epoch always has a checkpoint
            # another host can resume from.
            job_id, attempt = self.claim.job_id, self.claim.attempt
            epoch, path = int(event["epoch"]), Path(event["path"])
            self._retrying(lambda: store_checkpoint(self.store, job_id, attempt, epoch, path))
        elif kind == "epoch":
            if self._db(runs.record_epoch, event):
                self.outcome.last_epoch = max(self.outcome.last_epoch, int(event["epoch"]))
            else:
                self.outcome.lost_ownership = True
        elif kind == "finished":
            self.outcome.finished = True
        elif kind == "failed":
            self.outcome.failure = event
            if event.get("reason") == FailureReason.disk_full:
                release_reserve(self.settings.data_dir)  # room to record the failure

    def _settle(self, returncode: int | None) -> None:
        outcome = self.outcome
        job_id = self.claim.job_id
        if outcome.lost_ownership:
            log.warning(
                "job %s attempt %s: the job moved on; run dropped", job_id, self.claim.attempt
            )
            return
        if outcome.stopped_for_shutdown:
            if self._db(lifecycle.requeue):
                log.info("job %s requeued: worker shutting down", job_id)
            return
        if outcome.cancelled:
            message = f"cancelled on request after epoch {outcome.last_epoch}"
            ended = self._db(
                lifecycle.finish, JobStatus.cancelled, FailureReason.cancelled, message
            )
        elif outcome.finished and returncode == 0 and not (self.workdir / "model.keras").exists():
            message = f"the trainer reported success but wrote no {self.workdir / 'model.keras'}"
            ended = self._db(lifecycle.finish, JobStatus.failed, FailureReason.internal, message)
        elif outcome.finished and returncode == 0:
            attempt = self.claim.attempt
            self._retrying(lambda: store_results(self.store, job_id, attempt, self.workdir))
            ended = self._db(lifecycle.finish, JobStatus.succeeded)
        else:
            reason, message = self._failure(returncode)
            if reason in (FailureReason.oom, FailureReason.killed) and self._retry_killed(
                returncode, message
            ):
                return
            ended = self._db(lifecycle.finish, JobStatus.failed, reason, message)
        if ended and not self.claim.spec.get("keep_checkpoints"):
            # An ended job never resumes: its checkpoints (tens of MB each) would only fill
            # the disk. The model, metrics and log stay.
            shutil.rmtree(self.workdir / "checkpoints", ignore_errors=True)
            self._retrying(lambda: drop_checkpoints(self.store, job_id))

    def _retry_killed(self, returncode: int | None, message: str) -> bool:
        """With TRAINYARD_RETRY_KILLED_RUNS, a SIGKILLed run goes back to the queue (counted
        as a lost run, so a job that is killed every time still ends) instead of failing."""
        if returncode != -signal.SIGKILL or not self.settings.retry_killed_runs:
            return False
        why = message.split("\n", 1)[0]
        self._db(runs.lose_killed_run, why, self.settings.max_lost_runs)
        log.warning("job %s: %s; requeued to resume from its checkpoint", self.claim.job_id, why)
        return True

    def _failure(self, returncode: int | None) -> tuple[FailureReason, str]:
        tail = training_tail(self.log_path, self.settings.log_tail_lines)
        failure = self.outcome.failure
        if failure is not None:
            try:
                reason = FailureReason(str(failure.get("reason")))
            except ValueError:
                reason = FailureReason.internal
            message = str(failure.get("message") or "training failed")
        elif returncode == -signal.SIGKILL and self._oom_killed():
            reason = FailureReason.oom
            message = "the trainer was killed by the kernel's OOM killer (out of memory)"
        elif returncode == -signal.SIGKILL:
            reason = FailureReason.killed
            message = (
                "the trainer was killed (SIGKILL) from outside Trainyard; the kernel recorded "
                "no OOM kill in this cgroup"
            )
        elif returncode in (-signal.SIGTERM, -signal.SIGINT):
            reason = FailureReason.terminated
            message = (
                f"the trainer was ended by {signal.Signals(-returncode).name} from outside "
                "Trainyard (not a cancel or a worker shutdown)"
            )
        else:
            reason = FailureReason.internal
            message = f"the trainer exited with status {returncode} without reporting why"
        if reason != FailureReason.user_error and tail:
            message = f"{message}\n--- last lines of train.log ---\n{tail}"
        return reason, message


def run_job(
    settings: Settings,
    session_factory: Callable[[], Session],
    job_id: int,
    shutdown: threading.Event,
) -> RunOutcome | None:
    """Claim job `job_id` and run it to the end; None when it was not placed here (a
    duplicate delivery, a cancelled job)."""
    with session_factory() as session:
        claim = lifecycle.claim(session, job_id, settings.worker_name)
    if claim is None:
        log.info("job %s is not placed on this host: delivery dropped", job_id)
        return None
    log.info("job %s attempt %s: starting the trainer", job_id, claim.attempt)
    return JobSupervisor(settings, session_factory, claim, shutdown).run()
