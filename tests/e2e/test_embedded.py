"""`trainyard up` with nothing but a data directory: SQLite and the filesystem broker,
a real Celery worker process and real trainings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import scenarios
from tests.e2e.service import free_port, processes, service_env, wait_healthy

pytestmark = pytest.mark.training


def test_embedded_up_trains_records_and_cancels(data_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with processes([["up", "--port", str(port)]], service_env(data_dir), tmp_path / "logs"):
        wait_healthy(base_url)
        assert (data_dir / "trainyard.db").exists()
        scenarios.job_succeeds_with_every_epoch_once(base_url)
        scenarios.running_job_cancels_within_seconds(base_url, data_dir)
