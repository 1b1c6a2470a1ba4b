"""The artifact store's two backends behave alike: what is put comes back byte for byte, in
chunks, under its key; a failed put leaves nothing; keys list and delete by prefix; a copy is
checked against the stored SHA-256. The database backend runs on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.artifacts import (
    CHUNK_BYTES,
    ArtifactStore,
    DatabaseStore,
    DirectoryStore,
    download,
)
from app.core.db import get_session_factory


@pytest.fixture(params=["database", "directory"])
def store(request: pytest.FixtureRequest, db: Path, tmp_path: Path) -> ArtifactStore:
    if request.param == "database":
        return DatabaseStore(get_session_factory())
    return DirectoryStore(tmp_path / "shared")


class Broken(io.RawIOBase):
    """A source that fails after `good` bytes, as a dropped upload would."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            raise OSError("connection reset")
        size = min(len(buffer), self.left)
        buffer[:size] = b"x" * size
        self.left -= size
        return size


def test_what_is_put_comes_back_in_chunks(store: ArtifactStore) -> None:
    payload = os.urandom(2 * CHUNK_BYTES + 123)  # three chunks, the last one short
    stored = store.put("jobs/7/model.a1.keras", io.BytesIO(payload))
    assert (stored.size, stored.sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert store.info("jobs/7/model.a1.keras") == stored
    chunks = list(store.chunks("jobs/7/model.a1.keras"))
    assert len(chunks) == 3 and b"".join(chunks) == payload
    # Putting the key again replaces it.
    store.put("jobs/7/model.a1.keras", io.BytesIO(b"second"))
    assert b"".join(store.chunks("jobs/7/model.a1.keras")) == b"second"


def test_a_failed_put_leaves_nothing(store: ArtifactStore) -> None:
    with pytest.raises(OSError, match="connection reset"):
        store.put("datasets/abc.npz", io.BufferedReader(Broken(CHUNK_BYTES + 10)))
    assert store.info("datasets/abc.npz") is None
    assert store.keys("") == []
    if isinstance(store, DatabaseStore):  # nor any staged chunk
        from sqlalchemy import func, select

        from app.core.models import ArtifactChunk

        with get_session_factory()() as session:
            assert session.scalar(select(func.count()).select_from(ArtifactChunk)) == 0


def test_keys_list_and_delete_by_prefix(store: ArtifactStore) -> None:
    for key in ("jobs/1/checkpoints/epoch-0001.a1.npz", "jobs/1/model.a1.keras", "jobs/12/x"):
        store.put(key, io.BytesIO(key.encode()))
    assert store.keys("jobs/1/") == [
        "jobs/1/checkpoints/epoch-0001.a1.npz",
        "jobs/1/model.a1.keras",
    ]
    store.delete_prefix("jobs/1/checkpoints/")
    assert store.keys("jobs/") == ["jobs/1/model.a1.keras", "jobs/12/x"]
    store.delete("jobs/12/x")
    assert store.keys("jobs/") == ["jobs/1/model.a1.keras"]
    with pytest.raises(KeyError):
        store.chunks("jobs/12/x")


def test_a_download_is_checked_and_never_half_written(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = os.urandom(CHUNK_BYTES + 5)
    store.put("datasets/d.npz", io.BytesIO(payload))
    target = tmp_path / "cache" / "d.npz"
    assert download(store, "datasets/d.npz", target).size == len(payload)
    assert target.read_bytes() == payload
    # Bytes that do not match the stored SHA-256: refused, nothing left at the target.
    target.unlink()
    original = store.chunks

    def corrupted(key: str) -> Iterator[bytes]:
        return iter([b"not" + b"".join(original(key))[3:]])

    monkeypatch.setattr(store, "chunks", corrupted)
    with pytest.raises(OSError, match="corrupt"):
        download(store, "datasets/d.npz", target)
    assert list(target.parent.iterdir()) == []


def test_keys_cannot_leave_the_store(store: ArtifactStore) -> None:
    for key in ("../etc/passwd", "/abs", "jobs//x", "jobs/./x", ""):
        with pytest.raises(ValueError, match="not an artifact key"):
            store.put(key, io.BytesIO(b"x"))
