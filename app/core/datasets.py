"""Uploaded datasets: validate an .npz before anything is stored, then keep it by id."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import ColumnElement, delete, func, or_, select, true, update
from sqlalchemy.orm import Session, selectinload

from app.core.artifacts import ArtifactStore, artifact_store, dataset_key, upload_file
from app.core.config import Settings
from app.core.dataset_files import DatasetError, check_unpacked_size, describe, load_npz
from app.core.jobs import active_jobs_naming
from app.core.models import Dataset, User


class TooLarge(ValueError):
    """The upload is over `Settings.max_dataset_bytes` or its owner's storage quota."""


class InUse(Exception):
    """Queued, placed or running jobs train on the dataset (or architecture): it cannot be
    deleted yet."""

    def __init__(self, item_id: int, job_ids: list[int], what: str = "dataset") -> None:
        shown = ", ".join(map(str, job_ids[:10])) + (", ..." if len(job_ids) > 10 else "")
        super().__init__(f"{what} {item_id} is used by active jobs: {shown}")
        self.job_ids = job_ids


class ValidationsBusy(Exception):
    """Settings.max_concurrent_uploads uploads are being checked already; retry shortly."""


# Checking an upload loads its arrays (up to max_dataset_bytes in memory): at most
# Settings.max_concurrent_uploads at once per API process, so memory stays bounded.
_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def validation_slots(settings: Settings) -> threading.BoundedSemaphore:
    with _slots_lock:
        limit = settings.max_concurrent_uploads
        return _slots.setdefault(limit, threading.BoundedSemaphore(limit))


def store_upload(
    session: Session,
    settings: Settings,
    owner: User,
    name: str,
    upload: BinaryIO,
    public: bool = False,
) -> Dataset:
    """Copy `upload` aside, validate it (DatasetError, TooLarge, ValidationsBusy), then
    record and keep it as `owner`'s.

    The file is staged and checked before the database is touched, and moved into place by
    a rename, so the write transaction (SQLite's one lock) is held only for an instant.
    """
    # A zip bomb is refused by its central directory alone, which needs no slot: a burst
    # of bombs gets its 422s, not the 429s meant for uploads whose arrays are being loaded.
    _check_zip_headers(upload, settings.max_dataset_bytes)
    with validation_slot(settings):
        return _store(session, settings, owner, name, upload, public)


@contextmanager
def validation_slot(settings: Settings) -> Iterator[None]:
    """One of the Settings.max_concurrent_uploads checks an API process runs at once (a
    dataset's or an architecture's); ValidationsBusy when all are taken."""
    slots = validation_slots(settings)
    if not slots.acquire(blocking=False):
        raise ValidationsBusy(
            f"{settings.max_concurrent_uploads} uploads are being checked already "
            "(TRAINYARD_MAX_CONCURRENT_UPLOADS); send it again shortly"
        )
    try:
        yield
    finally:
        slots.release()


def copy_upload(
    upload: BinaryIO, out: BinaryIO, within_limits: Callable[[int], None]
) -> tuple[int, str]:
    """Copy `upload` to `out` a MiB at a time, as it streams in; `within_limits(bytes so
    far)` raises to stop before a chunk is written. Returns (size, SHA-256 hex digest)."""
    copied, digest = 0, hashlib.sha256()
    while chunk := upload.read(1024 * 1024):
        copied += len(chunk)
        digest.update(chunk)
        within_limits(copied)
        out.write(chunk)
    return copied, digest.hexdigest()


def _check_zip_headers(upload: BinaryIO, limit: int) -> None:
    """DatasetError if `upload` is a zip whose entries declare more than `limit` bytes
    unpacked or use a compression np.savez does not write (check_unpacked_size). Anything
    else (empty, over the limit, not a zip, not seekable) is left to _store to say."""
    if not upload.seekable():
        return
    try:
        size = upload.seek(0, os.SEEK_END)
        if 0 < size <= limit and zipfile.is_zipfile(upload):
            check_unpacked_size(upload, limit)
    finally:
        upload.seek(0)


def stored_bytes(session: Session, owner_id: int) -> int:
    """What `owner_id`'s uploads take, as counted against the storage quota."""
    used = session.scalar(select(func.sum(Dataset.size_bytes)).where(Dataset.owner_id == owner_id))
    return int(used or 0)


def _quota_error(settings: Settings, used: int, size: int) -> TooLarge:
    return TooLarge(
        f"this upload ({size} bytes) would exceed your storage quota: {used} of "
        f"{settings.max_storage_bytes_per_user} bytes in use "
        "(TRAINYARD_MAX_STORAGE_BYTES_PER_USER); delete datasets you no longer need"
    )


def _store(
    session: Session, settings: Settings, owner: User, name: str, upload: BinaryIO, public: bool
) -> Dataset:
    settings.ensure_dirs()
    limit = settings.max_dataset_bytes
    quota = settings.max_storage_bytes_per_user
    if quota:
        used = stored_bytes(session, owner.id)
        session.rollback()  # no read transaction held while the body streams in
        if used >= quota:
            raise _quota_error(settings, used, 1)
    handle, staged_name = tempfile.mkstemp(dir=settings.datasets_dir / "uploads", suffix=".part")
    staged = Path(staged_name)
    store = artifact_store(settings)
    stored_key = None
    try:

        def within_limits(copied: int) -> None:
            if copied > limit:
                raise TooLarge(
                    f"file is over the limit of {limit} bytes (TRAINYARD_MAX_DATASET_BYTES)"
                )
            if quota and used + copied > quota:
                raise _quota_error(settings, used, copied)

        with os.fdopen(handle, "wb") as out:
            copied, sha256 = copy_upload(upload, out, within_limits)
        if copied == 0:
            raise DatasetError("file is empty")
        summary = describe(load_npz(staged, max_bytes=limit))
        # Into the artifact store, where every worker fetches it (by content: the same bytes
        # uploaded twice are stored once). Before the row and its lock: with the database
        # store, the chunks are written by sessions of their own.
        if store.info(dataset_key(sha256)) is None:
            stored_key = upload_file(store, dataset_key(sha256), staged).key
        if quota:
            # Counted again under the owner's row lock: two uploads of one user that each
            # fit alone cannot both be stored past the quota.
            session.execute(update(User).where(User.id == owner.id).values(name=User.name))
            used = stored_bytes(session, owner.id)
            if used + copied > quota:
                raise _quota_error(settings, used, copied)
        dataset = Dataset(
            name=name[:200],
            owner_id=owner.id,
            public=public,
            image_shape=summary["image_shape"],
            dtype=summary["dtype"],
            classes=summary["classes"],
            train_images=summary["train_images"],
            test_images=summary["test_images"],
            size_bytes=copied,
            sha256=sha256,
        )
        session.add(dataset)
        session.commit()
    except BaseException:
        session.rollback()
        if stored_key is not None:
            _drop_unused_file(session, store, sha256)
        raise
    finally:
        staged.unlink(missing_ok=True)
    return dataset


def _drop_unused_file(session: Session, store: ArtifactStore, sha256: str) -> None:
    """Remove the stored file of `sha256` unless a dataset still names it."""
    used = session.scalar(select(func.count()).select_from(Dataset).where(Dataset.sha256 == sha256))
    session.rollback()
    if not used:
        store.delete(dataset_key(sha256))


def visible_to(user: User) -> ColumnElement[bool]:
    """Datasets `user` may see and train on: their own and public ones; an admin, all."""
    if user.is_admin:
        return true()
    return or_(Dataset.owner_id == user.id, Dataset.public.is_(True))


def list_datasets(session: Session, user: User) -> list[Dataset]:
    query = select(Dataset).where(visible_to(user)).order_by(Dataset.id.desc())
    return list(session.scalars(query.options(selectinload(Dataset.owner))))


def get_dataset(session: Session, dataset_id: int, user: User) -> Dataset | None:
    """The dataset, or None when it does not exist or `user` may not see it (the same
    answer, so ids of others' private uploads are not revealed)."""
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, visible_to(user)))


def delete_dataset(session: Session, settings: Settings, dataset: Dataset) -> None:
    """Remove the dataset and its file (commits). Raises InUse, deleting nothing, while a
    queued, placed or running job names it; finished jobs keep their records.

    The row is locked first (an UPDATE) and only then are active jobs looked for: a racing
    `lifecycle.submit`, which reads the dataset under a share lock, either committed its job
    before (found here) or waits and then finds the dataset gone.
    """
    session.commit()  # a fresh transaction, so the lock is taken before anything is read
    session.execute(update(Dataset).where(Dataset.id == dataset.id).values(name=Dataset.name))
    users = active_jobs_naming(session, "dataset", dataset.id)
    if users:
        session.rollback()
        raise InUse(dataset.id, users)
    session.execute(delete(Dataset).where(Dataset.id == dataset.id))
    session.commit()
    if dataset.sha256 is not None:
        _drop_unused_file(session, artifact_store(settings), dataset.sha256)
    settings.dataset_path(dataset.id).unlink(missing_ok=True)  # an upload from before the store
