"""`trainyard up` with nothing but a data directory: SQLite and the filesystem broker,
a real Celery worker process and real trainings."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.e2e import scenarios
from tests.e2e.service import api_client, free_port, processes, service_env, wait_healthy

pytestmark = pytest.mark.training


@pytest.mark.timeout(1200)  # the README's first job trains MiniGoogLeNet on digits for 3 epochs
def test_embedded_up_trains_records_and_cancels(data_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(data_dir, url=base_url)
    with processes([["up", "--port", str(port)]], env, tmp_path / "logs"):
        wait_healthy(base_url)
        assert (data_dir / "trainyard.db").exists()
        # First start: an admin was created and its token kept for the owner only.
        token_file = data_dir / "admin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        with api_client(base_url, token_file.read_text().strip()) as client:
            assert client.get("/jobs").status_code == 200
            # The README's first job, which also checks all a finished job offers.
            scenarios.readme_first_job_learns(client)
            scenarios.running_job_cancels_within_seconds(client, data_dir)
            scenarios.uploaded_dataset_trains(client)
        scenarios.cli_session(env, tmp_path)
