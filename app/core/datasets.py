"""Uploaded datasets: validate an .npz before anything is stored, then keep it by id."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.dataset_files import DatasetError, describe, load_npz
from app.core.models import Dataset


class TooLarge(ValueError):
    """The upload is over `Settings.max_dataset_bytes`."""


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


def store_upload(session: Session, settings: Settings, name: str, upload: BinaryIO) -> Dataset:
    """Copy `upload` aside, validate it (DatasetError, TooLarge, ValidationsBusy), then
    record and keep it.

    The file is staged and checked before the database is touched, and moved into place by
    a rename, so the write transaction (SQLite's one lock) is held only for an instant.
    """
    slots = validation_slots(settings)
    if not slots.acquire(blocking=False):
        raise ValidationsBusy(
            f"{settings.max_concurrent_uploads} uploads are being checked already "
            "(TRAINYARD_MAX_CONCURRENT_UPLOADS); send it again shortly"
        )
    try:
        return _store(session, settings, name, upload)
    finally:
        slots.release()


def _store(session: Session, settings: Settings, name: str, upload: BinaryIO) -> Dataset:
    settings.ensure_dirs()
    limit = settings.max_dataset_bytes
    handle, staged_name = tempfile.mkstemp(dir=settings.datasets_dir / "uploads", suffix=".part")
    staged = Path(staged_name)
    try:
        copied = 0
        with os.fdopen(handle, "wb") as out:
            while chunk := upload.read(1024 * 1024):
                copied += len(chunk)
                if copied > limit:
                    raise TooLarge(f"file is over the limit of {limit} bytes")
                out.write(chunk)
        if copied == 0:
            raise DatasetError("file is empty")
        summary = describe(load_npz(staged, max_bytes=limit))
        dataset = Dataset(
            name=name[:200],
            image_shape=summary["image_shape"],
            dtype=summary["dtype"],
            classes=summary["classes"],
            train_images=summary["train_images"],
            test_images=summary["test_images"],
            size_bytes=copied,
        )
        session.add(dataset)
        session.flush()  # assigns the id the file is named after
        os.replace(staged, settings.dataset_path(dataset.id))
        session.commit()
    except BaseException:
        session.rollback()
        staged.unlink(missing_ok=True)
        raise
    return dataset


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.id.desc())))


def get_dataset(session: Session, dataset_id: int) -> Dataset | None:
    return session.get(Dataset, dataset_id)
