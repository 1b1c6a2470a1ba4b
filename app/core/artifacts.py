"""The artifact store: the files of jobs and datasets (models, mean images, checkpoints,
uploaded .npz), kept where every host can reach them, so the API and each worker need share
nothing but the database and the broker.

Two backends behind one small interface, chosen by TRAINYARD_ARTIFACT_STORE:

- `database` (the default): chunked blobs in the system of record (`artifacts`,
  `artifact_chunks`), streamed in and out a chunk at a time, never whole in memory;
- a directory (`file:///mnt/trainyard` or a plain path): for a shared mount or for models
  too large for the database. Files are written to a temporary name and renamed.

Keys are relative paths: `jobs/<id>/model.keras`, `jobs/<id>/checkpoints/epoch-0003.npz`,
`datasets/<sha256>.npz`. Writing a key again replaces it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import get_session_factory
from app.core.models import Artifact, ArtifactChunk, utcnow

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StoredArtifact:
    key: str
    size: int
    sha256: str


class ArtifactStore(Protocol):
    def put(self, key: str, source: BinaryIO) -> StoredArtifact:
        """Store what `source` holds (read to its end, a chunk at a time) under `key`."""
        ...

    def chunks(self, key: str) -> Iterator[bytes]:
        """The artifact's bytes, a chunk at a time; KeyError when there is none."""
        ...

    def info(self, key: str) -> StoredArtifact | None: ...

    def keys(self, prefix: str) -> list[str]:
        """Keys under `prefix`, sorted."""
        ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not an artifact key: {key!r}")
    return key


class DatabaseStore:
    """Artifacts as rows of CHUNK_BYTES chunks; each call uses short sessions of its own, so
    a large upload or download holds no transaction for long."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory

    def put(self, key: str, source: BinaryIO) -> StoredArtifact:
        _check_key(key)
        digest, size = hashlib.sha256(), 0
        # Written under a temporary key and renamed in one transaction at the end, so a
        # reader never sees half of it and a failed upload leaves no partial artifact.
        staging = f"{key}.part-{os.getpid()}-{id(source)}"
        self._drop_chunks(staging)
        try:
            seq = 0
            while chunk := source.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                with self.session_factory() as session:
                    session.add(ArtifactChunk(key=staging, seq=seq, data=chunk))
                    session.commit()
                seq += 1
            stored = StoredArtifact(key, size, digest.hexdigest())
            try:
                self._publish(staging, stored)
            except IntegrityError:
                # A concurrent put of the same key won; with the same bytes (a dataset
                # uploaded twice at once) that is this put's result too.
                if self.info(key) != stored:
                    raise
                self._drop_chunks(staging)
            return stored
        except BaseException:
            self._drop_chunks(staging)
            raise

    def _publish(self, staging: str, stored: StoredArtifact) -> None:
        """Rename the staged chunks to the key and record it, in one transaction."""
        key = stored.key
        with self.session_factory() as session:
            session.execute(delete(ArtifactChunk).where(ArtifactChunk.key == key))
            session.execute(delete(Artifact).where(Artifact.key == key))
            session.execute(
                update(ArtifactChunk).where(ArtifactChunk.key == staging).values(key=key)
            )
            session.add(
                Artifact(key=key, size=stored.size, sha256=stored.sha256, created_at=utcnow())
            )
            session.commit()

    def _drop_chunks(self, key: str) -> None:
        with self.session_factory() as session:
            session.execute(delete(ArtifactChunk).where(ArtifactChunk.key == key))
            session.commit()

    def chunks(self, key: str) -> Iterator[bytes]:
        if self.info(key) is None:
            raise KeyError(key)
        return self._read(key)

    def _read(self, key: str) -> Iterator[bytes]:
        seq = 0
        while True:
            with self.session_factory() as session:
                data = session.scalar(
                    select(ArtifactChunk.data).where(
                        ArtifactChunk.key == key, ArtifactChunk.seq == seq
                    )
                )
            if data is None:
                return
            yield bytes(data)
            seq += 1

    def info(self, key: str) -> StoredArtifact | None:
        with self.session_factory() as session:
            row = session.get(Artifact, key)
            return StoredArtifact(row.key, row.size, row.sha256) if row else None

    def keys(self, prefix: str) -> list[str]:
        with self.session_factory() as session:
            return list(
                session.scalars(
                    select(Artifact.key)
                    .where(func.substr(Artifact.key, 1, len(prefix)) == prefix)
                    .order_by(Artifact.key)
                )
            )

    def delete(self, key: str) -> None:
        with self.session_factory() as session:
            session.execute(delete(ArtifactChunk).where(ArtifactChunk.key == key))
            session.execute(delete(Artifact).where(Artifact.key == key))
            session.commit()

    def delete_prefix(self, prefix: str) -> None:
        for key in self.keys(prefix):
            self.delete(key)


class DirectoryStore:
    """Artifacts as files under `root` (a shared mount, or a local disk for one host)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, source: BinaryIO) -> StoredArtifact:
        final = self._path(key)
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        handle, staged = tempfile.mkstemp(
            dir=final.parent, prefix=f".{final.name}.", suffix=".part"
        )
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(staged, final)
        except BaseException:
            Path(staged).unlink(missing_ok=True)
            raise
        (final.parent / f".{final.name}.sha256").write_text(f"{digest.hexdigest()} {size}\n")
        return StoredArtifact(key, size, digest.hexdigest())

    def chunks(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise KeyError(key)
        handle = path.open("rb")

        def read() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(CHUNK_BYTES):
                    yield chunk

        return read()

    def info(self, key: str) -> StoredArtifact | None:
        path = self._path(key)
        if not path.is_file():
            return None
        sidecar = path.parent / f".{path.name}.sha256"
        try:
            sha256, size = sidecar.read_text().split()
        except (OSError, ValueError):
            return StoredArtifact(key, path.stat().st_size, "")
        return StoredArtifact(key, int(size), sha256)

    def keys(self, prefix: str) -> list[str]:
        found = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        return sorted(found)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        (path.parent / f".{path.name}.sha256").unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        for key in self.keys(prefix):
            self.delete(key)
        folder = self.root / prefix.rstrip("/")
        if prefix.endswith("/") and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def artifact_store(
    settings: Settings, session_factory: Callable[[], Session] | None = None
) -> ArtifactStore:
    """The store TRAINYARD_ARTIFACT_STORE names."""
    if settings.artifact_dir is not None:
        return DirectoryStore(settings.artifact_dir)
    return DatabaseStore(session_factory or get_session_factory())


def download(store: ArtifactStore, key: str, target: Path) -> StoredArtifact:
    """Copy an artifact to `target` (written aside and renamed: a reader never sees half a
    file), checking its SHA-256 against the stored one."""
    info = store.info(key)
    if info is None:
        raise KeyError(key)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle, staged = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in store.chunks(key):
                digest.update(chunk)
                out.write(chunk)
        if info.sha256 and digest.hexdigest() != info.sha256:
            raise OSError(
                f"artifact {key} is corrupt: SHA-256 {digest.hexdigest()}, stored {info.sha256}"
            )
        os.replace(staged, target)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return info


def upload_file(store: ArtifactStore, key: str, path: Path) -> StoredArtifact:
    with path.open("rb") as source:
        return store.put(key, source)


# -- where each file of a job or dataset is kept ---------------------------------------------
# A run's files carry its attempt number in their keys, as its database writes do: a stale
# run (one whose job moved on) can never overwrite what the current attempt stored.

_CHECKPOINT = re.compile(r"^epoch-(\d+)\.a(\d+)\.npz$")


def job_prefix(job_id: int) -> str:
    return f"jobs/{job_id}/"


def checkpoints_prefix(job_id: int) -> str:
    return f"jobs/{job_id}/checkpoints/"


def checkpoint_key(job_id: int, epoch: int, attempt: int) -> str:
    return f"{checkpoints_prefix(job_id)}epoch-{epoch:04d}.a{attempt}.npz"


def stored_checkpoints(store: ArtifactStore, job_id: int) -> list[tuple[int, int, str]]:
    """(epoch, attempt, key) of the job's stored checkpoints, oldest epoch first."""
    found = []
    prefix = checkpoints_prefix(job_id)
    for key in store.keys(prefix):
        match = _CHECKPOINT.match(key.removeprefix(prefix))
        if match:
            found.append((int(match.group(1)), int(match.group(2)), key))
    return sorted(found)


def model_key(job_id: int, attempt: int) -> str:
    """The trained model of the attempt that finished the job (jobs.attempt once succeeded)."""
    return f"jobs/{job_id}/model.a{attempt}.keras"


def mean_image_key(job_id: int, attempt: int) -> str:
    return f"jobs/{job_id}/mean_image.a{attempt}.npy"


def dataset_key(sha256: str) -> str:
    return f"datasets/{sha256}.npz"


def architecture_key(sha256: str) -> str:
    """An uploaded architecture's file (.keras or JSON), by content."""
    return f"architectures/{sha256}"
