"""Input that used to crash or stall the API gets a 4xx naming the field, on SQLite and on
PostgreSQL, and changes nothing: non-finite numbers, NUL and lone surrogates, ids beyond the
id columns' range or written loosely, oversized bodies, oversized echoes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.core.config import get_settings
from app.core.db import get_session_factory
from app.core.models import Dataset, Job
from app.main import app
from tests.conftest import bearer

JSON = {"content-type": "application/json"}


@pytest.fixture
def client(tokens: dict[str, str]) -> TestClient:
    # raise_server_exceptions=False: a server fault must show as the 500 a client would get.
    return TestClient(app, headers=bearer(tokens["root"]), raise_server_exceptions=False)


def stored() -> tuple[int, int]:
    with get_session_factory()() as session:
        jobs = session.scalar(select(func.count()).select_from(Job)) or 0
        datasets = session.scalar(select(func.count()).select_from(Dataset)) or 0
        return jobs, datasets


# Each once on each backend, in one test: a database per case would cost more than the case.
UNSTORABLE = [
    (b'{"lr": NaN}', "lr"),
    (b'{"lr": Infinity}', "lr"),
    (b'{"momentum": -Infinity}', "momentum"),
    (b'{"lr": 1e400}', "lr"),
    (b'{"epochs": 1e400}', "epochs"),
    (b'{"seed": NaN}', "seed"),
    (b'{"bn_momentum": NaN}', "bn_momentum"),
    (b'{"unknown": NaN}', "unknown"),
    (b'{"name": "a\\ud800b"}', "name"),
    (b'{"name": "a\\u0000b"}', "name"),
]


def test_unstorable_values_are_422_naming_the_field(client: TestClient) -> None:
    for body, field in UNSTORABLE:
        response = client.post("/jobs", content=body, headers=JSON)
        assert response.status_code == 422, (body, response.text)
        # A union (bn_momentum: "auto" or a number) reports one error per alternative.
        locs = {tuple(error["loc"][:2]) for error in response.json()["detail"]}
        assert locs == {("body", field)}, body
    assert stored() == (0, 0)


def test_a_body_that_is_all_nan_is_422(client: TestClient) -> None:
    response = client.post("/jobs", content=b"[NaN, Infinity]", headers=JSON)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_a_dataset_name_with_nul_is_422(client: TestClient) -> None:
    response = client.post(
        "/datasets", files={"file": ("x.npz", b"PK\x05\x06" + b"\0" * 18)}, data={"name": "a\0"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]
    assert stored() == (0, 0)


def id_routes() -> Iterator[tuple[str, str]]:
    """(method, path template) of every documented route that takes a job, dataset or
    architecture id."""
    for path, operations in app.openapi()["paths"].items():
        if any(f"{{{name}}}" in path for name in ("job_id", "dataset_id", "architecture_id")):
            for method in operations:
                yield method.upper(), path


def test_ids_beyond_the_column_or_written_loosely_are_422(client: TestClient) -> None:
    routes = list(id_routes())
    assert len(routes) == 13  # job (read, delete), metrics, plot, logs, model, mean image,
    # cancel, events; dataset (read, delete); architecture (read, delete)
    bad = ["2147483648", "9223372036854775808", "1_0", "+1", "0x1", "0"]
    for (method, template), value in itertools.product(routes, bad):
        path = template.replace("{job_id}", value).replace("{dataset_id}", value)
        path = path.replace("{architecture_id}", value)
        response = client.request(method, path)
        assert response.status_code == 422, (method, path, response.text)
        assert response.json()["detail"][0]["loc"][0] == "path"


def test_offset_beyond_the_id_range_is_422(client: TestClient) -> None:
    assert client.get("/jobs", params={"offset": 2**31}).status_code == 422


def test_an_error_repeats_only_a_short_prefix_of_the_input(client: TestClient) -> None:
    response = client.post("/jobs", json={"dataset": "x" * 200_000})
    assert response.status_code == 422
    assert len(response.content) < 2_000
    assert all(len(str(e.get("input", ""))) <= 100 for e in response.json()["detail"])


def test_a_json_body_over_the_limit_is_413_before_it_is_parsed(client: TestClient) -> None:
    body: dict[str, Any] = {"name": "x", "padding": "y" * (2 * 1024 * 1024)}
    response = client.post("/jobs", json=body)
    assert response.status_code == 413
    assert str(get_settings().max_body_bytes) in response.text
    assert stored() == (0, 0)


def test_a_streamed_body_without_length_is_cut_off_at_the_limit(client: TestClient) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"name": "'
        for _ in range(64):  # 4 MiB offered, 64 KiB at a time
            sent += 65536
            yield b"z" * 65536
        yield b'"}'

    response = client.post("/jobs", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert stored() == (0, 0)


def drive(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[list[Any], int]:
    """POST /datasets straight through the ASGI app, the body fed in `chunks` as a server
    feeds a slow client's; returns the messages sent back and how many chunks were read."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        more = pulled < len(chunks)
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/datasets",
        "raw_path": b"/datasets",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"transfer-encoding", b"chunked"),
            *headers,
        ],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent, pulled


FORM_HEAD = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n\r\n'


def test_an_upload_over_the_limit_is_cut_off_while_it_streams(
    tokens: dict[str, str], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINYARD_MAX_DATASET_BYTES", "100000")
    get_settings.cache_clear()
    chunks = [FORM_HEAD, *[b"x" * 65536] * 256]  # 16 MiB offered
    sent, pulled = drive([(b"authorization", f"Bearer {tokens['root']}".encode())], chunks)
    assert sent[0]["status"] == 413
    assert b"TRAINYARD_MAX_DATASET_BYTES" in b"".join(m.get("body", b"") for m in sent[1:])
    # The limit (100 kB + 64 KiB for the form around the file) falls in the 3rd data chunk.
    assert pulled <= 5, f"read {pulled} of {len(chunks)} chunks"
    assert stored() == (0, 0)
    assert list((db / "datasets" / "uploads").iterdir()) == []


@pytest.mark.parametrize("authorization", [None, b"Bearer ty_not_a_token", b"Basic eDp5"])
def test_an_upload_without_a_valid_token_is_refused_before_its_body_is_read(
    db: Path, authorization: bytes | None
) -> None:
    headers = [(b"authorization", authorization)] if authorization else []
    sent, pulled = drive(headers, [FORM_HEAD, *[b"x" * 65536] * 64])
    assert sent[0]["status"] == 401
    assert pulled == 0
    assert stored() == (0, 0)
