"""GET /metrics: what Prometheus scrapes, read from the database so any API process gives the
box's figures; both backends. Parsed with prometheus-client's own parser."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from app.core.config import get_settings
from app.core.db import get_session_factory
from app.core.models import Epoch, Host
from app.main import app
from tests.conftest import bearer, place_and_claim, register_test_host
from tests.e2e.service import free_port, processes, service_env, wait_healthy


def scrape(
    client: TestClient | httpx.Client,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


@pytest.fixture
def client(tokens: dict[str, str]) -> TestClient:
    return TestClient(app, headers=bearer(tokens["alice"]))


def test_scraping_needs_a_token(db: Path) -> None:
    assert TestClient(app).get("/metrics").status_code == 401


def test_the_box_in_figures(client: TestClient) -> None:
    register_test_host(gpus=4)
    running = client.post("/jobs", json={"gpus": 2}).json()["id"]
    client.post("/jobs", json={"gpus": 0})  # stays queued: no CPU slot is claimed here
    place_and_claim(running)
    with get_session_factory()() as session:
        for epoch, seconds in ((1, 1.5), (2, 3.0), (3, 100.0)):
            session.add(Epoch(job_id=running, epoch=epoch, attempt=1, seconds=seconds))
        session.execute(update(Host).values(last_pass_seconds=0.012))
        session.commit()
    client.get(f"/jobs/{running}")
    first = scrape(client)

    assert first[("trainyard_jobs", (("status", "running"),))] == 1
    assert first[("trainyard_jobs", (("status", "queued"),))] in (0, 1)  # placed or not yet
    assert first[("trainyard_jobs", (("status", "succeeded"),))] == 0
    host = (("host", "test-host"),)
    assert first[("trainyard_gpus", (*host, ("state", "leased")))] == 2
    assert first[("trainyard_gpus", (*host, ("state", "free")))] == 2
    assert first[("trainyard_scheduling_pass_seconds", host)] == pytest.approx(0.012)
    epochs = {
        le: first[("trainyard_epoch_seconds_bucket", (("le", le),))]
        for le in ("2.0", "5.0", "120.0", "+Inf")
    }
    assert epochs == {"2.0": 1, "5.0": 2, "120.0": 3, "+Inf": 3}
    assert first[("trainyard_epoch_seconds_sum", ())] == pytest.approx(104.5)
    assert first[("trainyard_queue_wait_seconds_count", ())] == 1  # one job started
    route = (("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "200"))
    assert first[("trainyard_http_request_duration_seconds_count", route)] >= 1

    # GPU-seconds grow while the leases are held: two GPUs, so twice the time.
    time.sleep(0.5)
    held = ("trainyard_gpu_seconds_total", (("user", "alice"),))
    grown = scrape(client)[held] - first[held]
    assert 0.9 <= grown <= 10


def test_api_workers_share_one_port_and_their_request_timings(
    tokens: dict[str, str], db: Path, tmp_path: Path
) -> None:
    """`trainyard api --workers 2`: two processes answer on one port, and a scrape, whichever
    process answers it, counts the requests of both."""
    port = free_port()
    temporary = tmp_path / "tmp"  # where the workers' shared metric files go
    temporary.mkdir()
    env = service_env(db, database_url=get_settings().database_url) | {"TMPDIR": str(temporary)}
    base = f"http://127.0.0.1:{port}"
    listed = (
        "trainyard_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/jobs"), ("status", "200")),
    )
    with processes([["api", "--port", str(port), "--workers", "2"]], env, tmp_path / "logs") as (
        supervisor,
    ):
        wait_healthy(base)
        children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children").read_text()
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children.split()]
        assert sum(b"spawn_main" in command for command in commands) == 2  # the workers
        # Each worker writes its own file once it has answered: wait until both have.
        deadline = time.monotonic() + 60
        while len(list(temporary.glob("trainyard-metrics-*/histogram_*.db"))) < 2:
            assert time.monotonic() < deadline, "one worker answered no request"
            assert httpx.get(f"{base}/healthz").status_code == 200  # a new connection each
        alice = bearer(tokens["alice"])
        for _ in range(20):
            assert httpx.get(f"{base}/jobs", headers=alice).status_code == 200
        # A request is counted just after its answer is sent: the last may need a moment.
        counts = []
        deadline = time.monotonic() + 10
        while not counts or (counts[-1] != 20 and time.monotonic() < deadline):
            with httpx.Client(base_url=base, headers=alice) as scraper:
                counts.append(scrape(scraper).get(listed, 0))
        for _ in range(4):  # and then every scrape, whichever worker answers it
            with httpx.Client(base_url=base, headers=alice) as scraper:
                counts.append(scrape(scraper).get(listed, 0))
        assert counts[-5:] == [20] * 5, counts
