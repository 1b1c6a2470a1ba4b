"""Charts people compare and pages that poll them: /plots/compare.png overlays runs, and
plot.png answers 304 to If-None-Match until an epoch is added. Both backends."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.db import get_session_factory
from app.core.models import Epoch
from app.main import app
from tests.conftest import bearer


@pytest.fixture
def client(tokens: dict[str, str]) -> TestClient:
    return TestClient(app, headers=bearer(tokens["alice"]))


def add_epoch(job_id: int, epoch: int, accuracy: float) -> None:
    with get_session_factory()() as session:
        session.add(Epoch(job_id=job_id, epoch=epoch, attempt=1, val_accuracy=accuracy))
        session.commit()


def test_plot_is_304_until_an_epoch_is_added(client: TestClient) -> None:
    job_id = client.post("/jobs", json={"gpus": 0, "name": "a"}).json()["id"]
    add_epoch(job_id, 1, 0.5)
    first = client.get(f"/jobs/{job_id}/plot.png")
    assert first.status_code == 200 and first.content.startswith(b"\x89PNG")
    etag = first.headers["ETag"]
    again = client.get(f"/jobs/{job_id}/plot.png", headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)
    add_epoch(job_id, 2, 0.6)
    changed = client.get(f"/jobs/{job_id}/plot.png", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    stale = client.get(f"/jobs/{job_id}/plot.png", headers={"If-None-Match": '"other"'})
    assert stale.status_code == 200


def test_compare_overlays_runs(client: TestClient) -> None:
    ids = [client.post("/jobs", json={"gpus": 0, "name": f"run {n}"}).json()["id"] for n in (1, 2)]
    for job_id, base in zip(ids, (0.3, 0.5), strict=True):
        for epoch in (1, 2, 3):
            add_epoch(job_id, epoch, base + epoch / 10)
    response = client.get("/plots/compare.png", params={"jobs": f"{ids[0]},{ids[1]}"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (640, 480)
    single = client.get("/plots/compare.png", params={"jobs": str(ids[0]), "metric": "loss"})
    assert single.status_code == 200 and single.content != response.content


@pytest.mark.parametrize(
    ("params", "code", "names"),
    [
        ({"jobs": "1,x"}, 422, "jobs"),
        ({"jobs": ",".join(["1"] * 21)}, 422, "jobs"),
        ({"jobs": "0"}, 422, "jobs"),
        ({"jobs": "1", "metric": "replicas"}, 422, "metric"),
        ({}, 422, "jobs"),
    ],
)
def test_compare_refuses_bad_input_naming_it(
    client: TestClient, params: dict[str, str], code: int, names: str
) -> None:
    client.post("/jobs", json={"gpus": 0})
    response = client.get("/plots/compare.png", params=params)
    assert response.status_code == code
    assert response.json()["detail"][0]["loc"][-1] == names


@pytest.mark.parametrize("beyond", [False, True])  # True: beyond the id column's range
def test_compare_names_a_missing_job(client: TestClient, beyond: bool) -> None:
    job_id = client.post("/jobs", json={"gpus": 0}).json()["id"]
    missing = 9_999_999_999 if beyond else job_id + 5
    response = client.get("/plots/compare.png", params={"jobs": f"{job_id},{missing}"})
    assert response.status_code == 404 and f"job {missing} not found" in response.text
