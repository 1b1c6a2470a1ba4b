"""Uploaded datasets: validate an .npz before anything is stored, then keep it by id."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.dataset_files import DatasetError, describe, load_npz
from app.core.models import Dataset


class TooLarge(ValueError):
    """The upload is over `Settings.max_dataset_bytes`."""


def store_upload(session: Session, settings: Settings, name: str, upload: BinaryIO) -> Dataset:
    """Copy `upload` aside, validate it (DatasetError, TooLarge), then record and keep it.

    The file is staged and checked before the database is touched, and moved into place by
    a rename, so the write transaction (SQLite's one lock) is held only for an instant.
    """
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
