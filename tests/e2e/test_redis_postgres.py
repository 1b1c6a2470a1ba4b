"""Production shape: `trainyard api` and `trainyard worker` as separate processes on
PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e import scenarios
from tests.e2e.service import (
    add_user,
    api_client,
    free_port,
    processes,
    service_env,
    wait_healthy,
)

pytestmark = pytest.mark.training


def test_api_and_worker_on_redis_and_postgres(
    data_dir: Path, tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(
        data_dir,
        database_url=postgres_url,
        broker_url=redis_url,
        queue=f"trainyard-e2e-{uuid.uuid4().hex[:8]}",
    )
    token = add_user(env, "operator", admin=True)
    commands = [["api", "--port", str(port)], ["worker"]]
    with processes(commands, env, tmp_path / "logs"), api_client(base_url, token) as client:
        wait_healthy(base_url)
        scenarios.job_succeeds_with_every_epoch_once(client)
        scenarios.running_job_cancels_within_seconds(client, data_dir)
    assert not (data_dir / "trainyard.db").exists()  # everything went to PostgreSQL
