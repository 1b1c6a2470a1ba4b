"""A run's files in the artifact store (app/core/artifacts.py): what it fetches before its
trainer starts (the uploaded dataset, the newest stored checkpoint) and what it stores as the
trainer writes it (each epoch's checkpoint, the newest two kept; the model and mean image).
So a job resumes on any host, and the API serves its model, with no shared filesystem."""

from __future__ import annotations

import logging
from pathlib import Path

from app.core.artifacts import (
    ArtifactStore,
    architecture_key,
    checkpoint_key,
    checkpoints_prefix,
    dataset_key,
    download,
    mean_image_key,
    model_key,
    stored_checkpoints,
    upload_file,
)
from app.core.config import Settings

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2  # as the trainer keeps locally


def store_checkpoint(
    store: ArtifactStore, job_id: int, attempt: int, epoch: int, path: Path
) -> None:
    """Store epoch `epoch`'s checkpoint, then drop stored ones older than the newest two.
    Only checkpoints of this attempt or earlier ones are dropped: a stale run never
    deletes what a newer attempt stored."""
    upload_file(store, checkpoint_key(job_id, epoch, attempt), path)
    stored = stored_checkpoints(store, job_id)
    newest_epochs = sorted({e for e, _, _ in stored})[-KEEP_CHECKPOINTS:]
    for stored_epoch, stored_attempt, key in stored:
        if stored_epoch < newest_epochs[0] and stored_attempt <= attempt:
            store.delete(key)


def restore_checkpoint(store: ArtifactStore, job_id: int, folder: Path) -> int | None:
    """Put the newest stored checkpoint where the trainer looks (`epoch-NNNN.npz` in its
    checkpoints folder) unless one as new is there already; returns its epoch, if any."""
    stored = stored_checkpoints(store, job_id)
    if not stored:
        return None
    epoch, _, key = max(stored)  # the newest epoch; of it, the latest attempt's
    local = folder / f"epoch-{epoch:04d}.npz"
    present = [
        int(p.stem.split("-")[1]) for p in folder.glob("epoch-*.npz") if p.stem[6:].isdigit()
    ]
    if present and max(present) >= epoch:
        return max(present)
    download(store, key, local)
    log.info("job %s: restored the checkpoint of epoch %s from the artifact store", job_id, epoch)
    return epoch


def store_results(store: ArtifactStore, job_id: int, attempt: int, workdir: Path) -> None:
    """The trained model and the mean image the trainer left in `workdir`."""
    upload_file(store, model_key(job_id, attempt), workdir / "model.keras")
    mean = workdir / "mean_image.npy"
    if mean.exists():
        upload_file(store, mean_image_key(job_id, attempt), mean)


def drop_checkpoints(store: ArtifactStore, job_id: int) -> None:
    store.delete_prefix(checkpoints_prefix(job_id))


def cached_architecture(store: ArtifactStore, settings: Settings, sha256: str, kind: str) -> Path:
    """This host's copy of an uploaded architecture (`kind` "keras" or "json"), by content."""
    path = settings.datasets_dir / "cache" / f"{sha256}.{kind}"
    if not path.exists():
        download(store, architecture_key(sha256), path)
    return path


def cached_dataset(store: ArtifactStore, settings: Settings, sha256: str) -> Path:
    """This host's copy of an uploaded dataset, fetched from the store on first use and kept
    by content hash (a second dataset with the same bytes shares it)."""
    path = settings.datasets_dir / "cache" / f"{sha256}.npz"
    if not path.exists():
        download(store, dataset_key(sha256), path)  # checked against its SHA-256
    return path
