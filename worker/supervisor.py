"""Runs one claimed job: the trainer as a child process, its events into the database.

The trainer (`python -m worker.training`) runs in its own process group so that a cancel
or a shutdown can end it and everything it started; it reads our end of a pipe on stdin
and exits if we die, so it never outlives its supervisor. It speaks one JSON object per
line on stdout; its stderr is the job's `train.log`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
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
from app.core.config import Settings
from app.core.logs import tail_lines
from app.core.models import FailureReason, JobStatus
from worker import runs
from worker.procfs import group_alive
from worker.trainer_config import leased_devices, trainer_config

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
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
        deadline = self.last_written + self.settings.host_timeout_seconds / 2
        delay = 0.1
        while True:
            try:
                with self.session_factory() as session:
                    result = write(session, self.claim.job_id, self.claim.attempt, *args)
                self.last_written = time.monotonic()
                return result
            except OperationalError as error:
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
            message = f"the trainer could not be started: {type(error).__name__}: {error}"
            try:
                self._db(lifecycle.finish, JobStatus.failed, FailureReason.internal, message)
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
        config = trainer_config(self.claim.spec, self.settings)
        env = trainer_environment(self.settings)
        devices = self._db(leased_devices, self.settings)  # a read, retried as the writes
        config.update(devices.config)
        env.update(devices.env)
        config_path = self.workdir / "config.json"
        config_path.write_text(json.dumps(config, indent=2))
        with self.log_path.open("a") as stderr:
            stderr.write(
                f"=== attempt {self.claim.attempt} on {self.settings.worker_name} "
                f"at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ===\n"
            )
            stderr.flush()
            return subprocess.Popen(
                trainer_command(self.settings, config_path, self.workdir),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )

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
        elif kind == "epoch":
            if self._db(runs.record_epoch, event):
                self.outcome.last_epoch = max(self.outcome.last_epoch, int(event["epoch"]))
            else:
                self.outcome.lost_ownership = True
        elif kind == "finished":
            self.outcome.finished = True
        elif kind == "failed":
            self.outcome.failure = event

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
        elif outcome.finished and returncode == 0:
            ended = self._db(lifecycle.finish, JobStatus.succeeded)
        else:
            reason, message = self._failure(returncode)
            ended = self._db(lifecycle.finish, JobStatus.failed, reason, message)
        if ended and not self.claim.spec.get("keep_checkpoints"):
            # An ended job never resumes: its checkpoints (tens of MB each) would only fill
            # the disk. The model, metrics and log stay.
            shutil.rmtree(self.workdir / "checkpoints", ignore_errors=True)

    def _failure(self, returncode: int | None) -> tuple[FailureReason, str]:
        tail = tail_lines(self.log_path, self.settings.log_tail_lines).rstrip()
        failure = self.outcome.failure
        if failure is not None:
            try:
                reason = FailureReason(str(failure.get("reason")))
            except ValueError:
                reason = FailureReason.internal
            message = str(failure.get("message") or "training failed")
        elif returncode is not None and returncode == -signal.SIGKILL:
            reason = FailureReason.oom
            message = "the trainer was killed (SIGKILL), most often by the kernel's OOM killer"
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
