"""Uploading .npz datasets: validated before stored, each defect named, usable by id."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.artifacts import artifact_store
from app.core.config import get_settings
from app.main import app
from tests.conftest import bearer
from worker.run_files import cached_dataset

Arrays = dict[str, Any]


def good_arrays() -> Arrays:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (40, 16, 16, 1), dtype=np.uint8),
        "y_train": np.arange(40) % 4,
        "x_test": rng.integers(0, 256, (12, 16, 16, 1), dtype=np.uint8),
        "y_test": np.arange(12) % 4,
    }


def npz_bytes(arrays: Arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(client: TestClient, content: bytes, name: str = "mine.npz") -> Any:
    return client.post("/datasets", files={"file": (name, content, "application/octet-stream")})


@pytest.fixture
def client(tokens: dict[str, str]) -> TestClient:
    """Alice's client: a plain user."""
    return TestClient(app, headers=bearer(tokens["alice"]))


def uploads_dir() -> Path:
    return get_settings().datasets_dir / "uploads"


def test_good_upload_is_stored_listed_and_usable_by_jobs(client: TestClient) -> None:
    response = upload(client, npz_bytes(good_arrays()))
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["name"] == "mine.npz"
    assert dataset["image_shape"] == [16, 16, 1]
    assert (dataset["classes"], dataset["train_images"], dataset["test_images"]) == (4, 40, 12)
    assert client.get("/datasets").json() == [dataset]
    assert client.get(f"/datasets/{dataset['id']}").json() == dataset
    # Kept in the artifact store by content; a worker fetches it into its cache, checked.
    settings = get_settings()
    store = artifact_store(settings)
    assert store.keys("datasets/") == [f"datasets/{dataset['sha256']}.npz"]
    cached = cached_dataset(store, settings, dataset["sha256"])
    assert np.array_equal(np.load(cached)["y_train"], good_arrays()["y_train"])

    job = client.post("/jobs", json={"dataset": dataset["id"], "gpus": 0, "epochs": 1})
    assert job.status_code == 201 and job.json()["spec"]["dataset"] == dataset["id"]


def drop(key: str) -> Callable[[Arrays], Arrays]:
    return lambda a: {k: v for k, v in a.items() if k != key}


def change(key: str, value: Callable[[Arrays], Any]) -> Callable[[Arrays], Arrays]:
    return lambda a: {**a, key: value(a)}


BAD_FILES: list[tuple[str, Callable[[Arrays], Arrays], str]] = [
    ("missing key", drop("y_test"), "missing key y_test"),
    ("3-D images", change("x_train", lambda a: a["x_train"][..., 0]), "x_train must be 4-D"),
    (
        "2 channels",
        change("x_train", lambda a: np.zeros((40, 16, 16, 2), np.uint8)),
        "1 or 3 channels",
    ),
    ("tiny images", change("x_train", lambda a: a["x_train"][:, :4, :4]), "at least 8"),
    (
        "int32 images",
        change("x_train", lambda a: a["x_train"].astype(np.int32)),
        "uint8, float16, float32",
    ),
    ("float labels", change("y_train", lambda a: a["y_train"] + 0.5), "integer class ids"),
    ("negative label", change("y_train", lambda a: a["y_train"] - 1), "negative label"),
    ("one class", change("y_train", lambda a: np.zeros(40, np.int64)), "single class"),
    ("gap in classes", change("y_train", lambda a: a["y_train"] * 2), "never occur"),
    ("length mismatch", change("y_train", lambda a: a["y_train"][:30]), "30 labels"),
    ("test label unseen", change("y_test", lambda a: a["y_test"] + 4), "y_test has label"),
    (
        "split shapes differ",
        change("x_test", lambda a: np.zeros((12, 20, 20, 1), np.uint8)),
        "same image shape",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_each_malformed_npz_gets_its_own_422(
    client: TestClient, case: str, mutate: Callable[[Arrays], Arrays], message: str
) -> None:
    response = upload(client, npz_bytes(mutate(good_arrays())))
    assert response.status_code == 422, (case, response.text)
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "file"]
    assert message in detail[0]["msg"], detail
    assert client.get("/datasets").json() == []
    assert list(uploads_dir().iterdir()) == []


def test_a_file_that_is_not_npz_is_422(client: TestClient) -> None:
    for content in (b"", b"hello, not a zip", npz_bytes(good_arrays())[:200]):
        response = upload(client, content)
        assert response.status_code == 422, content[:20]
        assert response.json()["detail"][0]["loc"] == ["body", "file"]
    assert client.get("/datasets").json() == []


def test_zip_bomb_and_absurd_labels_are_422(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINYARD_MAX_DATASET_BYTES", "1000000")
    get_settings.cache_clear()
    zeros = good_arrays() | {"x_train": np.zeros((2000, 32, 32, 3), np.uint8)}
    zeros["y_train"] = np.arange(2000) % 4
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **zeros)
    assert len(buffer.getvalue()) < 1_000_000  # small on the wire...
    response = upload(client, buffer.getvalue())
    assert response.status_code == 422
    assert "unpacks to" in response.json()["detail"][0]["msg"]
    labels = good_arrays() | {"y_train": np.append(np.arange(39) % 4, 10**12)}
    response = upload(client, npz_bytes(labels))
    assert response.status_code == 422
    assert "label 1000000000000 but only 40 images" in response.json()["detail"][0]["msg"]
    assert client.get("/datasets").json() == []


def test_missing_file_field_is_422(client: TestClient) -> None:
    response = client.post("/datasets", data={"name": "x"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_over_the_size_cap_is_413(
    client: TestClient, configure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINYARD_MAX_DATASET_BYTES", "1000")
    get_settings.cache_clear()
    response = upload(client, npz_bytes(good_arrays()))
    assert response.status_code == 413
    assert "limit of 1000 bytes" in response.json()["detail"][0]["msg"]
    assert client.get("/datasets").json() == []


def bomb(name: str, compression: int, unpacked: int) -> bytes:
    """A small .npz-shaped zip whose entry `name` unpacks to `unpacked` zero bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        archive.writestr(name, b"\0" * unpacked)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        # np.load also reads an entry named plain "x_train": its size counts too.
        (bomb("x_train", zipfile.ZIP_DEFLATED, 5_000_000), "unpacks to 5000000 bytes"),
        (bomb("x_train.npy", zipfile.ZIP_DEFLATED, 5_000_000), "unpacks to 5000000 bytes"),
        # bzip2 turns a few kilobytes into gigabytes: not a method np.savez writes.
        (bomb("x_train", zipfile.ZIP_BZIP2, 10_000), "compression method 12"),
        (bomb("y_test.npy", zipfile.ZIP_LZMA, 10_000), "compression method 14"),
    ],
)
def test_archive_entries_are_checked_before_anything_is_unpacked(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, content: bytes, reason: str
) -> None:
    monkeypatch.setenv("TRAINYARD_MAX_DATASET_BYTES", "1000000")
    get_settings.cache_clear()
    assert len(content) < 20_000
    response = upload(client, content)
    assert response.status_code == 422
    assert reason in response.json()["detail"][0]["msg"]
    assert client.get("/datasets").json() == []


def test_job_naming_an_unknown_dataset_is_422(client: TestClient) -> None:
    response = client.post("/jobs", json={"dataset": 999, "gpus": 0})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "dataset"]
    assert client.get("/jobs").json()["total"] == 0
