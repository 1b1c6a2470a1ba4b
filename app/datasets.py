"""Uploaded datasets: validate an .npz before anything is stored, then keep it by id."""

from __future__ import annotations

import shutil
import tempfile
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import Dataset
from worker.training.dataset_files import DatasetError, describe, load_npz


class TooLarge(ValueError):
    """The upload is over `Settings.max_dataset_bytes`."""


def store_upload(session: Session, settings: Settings, name: str, upload: BinaryIO) -> Dataset:
    """Copy `upload` aside, validate it (DatasetError, TooLarge), then record and keep it."""
    settings.ensure_dirs()
    limit = settings.max_dataset_bytes
    with tempfile.NamedTemporaryFile(dir=settings.datasets_dir, suffix=".npz") as staged:
        copied = 0
        while chunk := upload.read(1024 * 1024):
            copied += len(chunk)
            if copied > limit:
                raise TooLarge(f"file is over the limit of {limit} bytes")
            staged.write(chunk)
        staged.flush()
        if copied == 0:
            raise DatasetError("file is empty")
        summary = describe(load_npz(staged.name, max_bytes=limit))
        dataset = Dataset(
            name=name,
            image_shape=summary["image_shape"],
            dtype=summary["dtype"],
            classes=summary["classes"],
            train_images=summary["train_images"],
            test_images=summary["test_images"],
            size_bytes=copied,
        )
        session.add(dataset)
        session.flush()  # assigns the id the file is named after
        shutil.copyfile(staged.name, settings.dataset_path(dataset.id))
    session.commit()
    return dataset


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.id.desc())))


def get_dataset(session: Session, dataset_id: int) -> Dataset | None:
    return session.get(Dataset, dataset_id)
