"""A plain `celery -A worker.celery_app worker` process (not `trainyard worker`) with the
embedded defaults, its trainer being tests/fake_trainer.py: it registers its host, places the
job, consumes its own host's queue and runs the job to the end, in seconds."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from app.core import lifecycle
from app.core.config import Settings
from app.core.db import make_engine
from app.core.migrate import upgrade_database
from app.core.models import TERMINAL_STATUSES, Epoch, Host, Job
from app.core.spec import JobSpec
from app.core.users import create_user
from tests.e2e.service import service_env
from tests.fake_trainer import command

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_celery_worker_consumes_its_hosts_queue(data_dir: Path, tmp_path: Path) -> None:
    name = f"fake-worker-{uuid.uuid4().hex[:8]}"
    settings = Settings(data_dir=data_dir, database_url="", broker_url="", worker_name=name)
    upgrade_database(settings)  # `celery ... worker` does not migrate; `trainyard worker` neither
    engine = make_engine(settings.database_url)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    env = service_env(
        data_dir,
        worker_name=name,
        trainer_command=command("started", "env", "epoch:1", "epoch:2", "finished"),
        schedule_seconds="0.2",
        database_url=settings.database_url,
    )
    env["PGPASSWORD"] = "not-for-trainers"
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-l", "INFO"],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with factory() as session:
            owner = create_user(session, "alice")[0]
            spec = JobSpec(dataset="synthetic", epochs=2, gpus=0)
            job_id = lifecycle.submit(session, spec, owner).id
        deadline = time.monotonic() + 30
        while True:
            with factory() as session:
                job = session.get(Job, job_id)
                assert job is not None
                if job.status in TERMINAL_STATUSES:
                    break
            assert worker.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"job stuck {job.status}:\n{log_path.read_text()}"
            time.sleep(0.2)
        assert (job.status, job.host, job.attempt) == ("succeeded", name, 1), job.failure_message
        with factory() as session:
            host = session.get(Host, name)
            assert host is not None and host.queue.endswith(f".{name}")
            recorded = session.scalars(select(Epoch.epoch).where(Epoch.job_id == job_id))
            assert sorted(recorded) == [1, 2]
        log = (settings.job_dir(job_id) / "train.log").read_text()
        assert f"attempt 1 on {name}" in log
        # The trainer gets the data directory, not the worker's connection settings.
        assert f"env TRAINYARD_DATA_DIR={data_dir}" in log
        assert "TRAINYARD_DATABASE_URL" not in log and "not-for-trainers" not in log
        # What the worker and its trainer wrote is theirs alone.
        written = [settings.job_dir(job_id), settings.broker_dir]
        for path in [p for top in written for p in (top, *top.rglob("*"))]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    finally:
        engine.dispose()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # a warm shutdown
        try:
            worker.wait(timeout=15)
        finally:
            with contextlib.suppress(ProcessLookupError):  # whatever is left of its group
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    assert worker.returncode == 0, log_path.read_text()
