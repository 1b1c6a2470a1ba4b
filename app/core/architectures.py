"""Uploaded architectures: checked in a child process, then kept by id (the file in the
artifact store by its SHA-256, the description in the database).

The check reads the model's config as data and refuses anything that would run code
(app/core/model_files.py), here, before any process loads it; then `python -m
worker.training.model_check` builds it with Keras' safe mode in a child with memory, CPU
and time limits, and says what it takes and gives. This module runs no Keras itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import ColumnElement, delete, func, or_, select, true, update
from sqlalchemy.orm import Session, selectinload

from app.core.artifacts import ArtifactStore, architecture_key, artifact_store, upload_file
from app.core.config import Settings
from app.core.datasets import InUse, TooLarge, ValidationsBusy, copy_upload, validation_slot
from app.core.jobs import active_jobs_naming
from app.core.model_files import ModelFileError, code_needed, read_config
from app.core.models import Architecture, User

__all__ = ["InUse", "ModelFileError", "TooLarge", "ValidationsBusy"]


def store_architecture(
    session: Session,
    settings: Settings,
    owner: User,
    name: str,
    upload: BinaryIO,
    output: str = "softmax",
    public: bool = False,
) -> Architecture:
    """Stage `upload`, check it (ModelFileError, TooLarge, ValidationsBusy), then record
    and keep it as `owner`'s (commits)."""
    with validation_slot(settings):
        return _store(session, settings, owner, name, upload, output, public)


def _store(
    session: Session,
    settings: Settings,
    owner: User,
    name: str,
    upload: BinaryIO,
    output: str,
    public: bool,
) -> Architecture:
    session.rollback()  # no read transaction held while the body streams and the check runs
    settings.ensure_dirs()
    handle, staged_name = tempfile.mkstemp(dir=settings.datasets_dir / "uploads", suffix=".part")
    staged = Path(staged_name)
    try:

        def within_limit(copied: int) -> None:
            if copied > settings.max_model_bytes:
                raise TooLarge(
                    f"file is over the limit of {settings.max_model_bytes} bytes "
                    "(TRAINYARD_MAX_MODEL_BYTES)"
                )

        with os.fdopen(handle, "wb") as out:
            copied, sha256 = copy_upload(upload, out, within_limit)
        if copied == 0:
            raise ModelFileError("file is empty")
        config, kind, has_weights = read_config(staged)
        if (why := code_needed(config)) is not None:
            raise ModelFileError(why)  # refused before any process builds it
        described = check_in_child(settings, staged, output)
        store = artifact_store(settings)
        if store.info(architecture_key(sha256)) is None:
            upload_file(store, architecture_key(sha256), staged)
        architecture = Architecture(
            name=name[:200],
            owner_id=owner.id,
            public=public,
            kind=kind,
            output=output,
            input_shape=described["input_shape"],
            classes=described["classes"],
            params=described["params"],
            has_weights=has_weights,
            size_bytes=copied,
            sha256=sha256,
        )
        session.add(architecture)
        session.commit()
        return architecture
    finally:
        staged.unlink(missing_ok=True)


def check_in_child(settings: Settings, path: Path, output: str) -> dict[str, Any]:
    """What worker/training/model_check.py says of the file, run in a child process that
    limits itself to `model_check_memory_bytes` of address space and `model_check_seconds`
    of CPU, and is stopped after `model_check_seconds`."""
    seconds = settings.model_check_seconds
    command = [
        sys.executable,
        "-m",
        "worker.training.model_check",
        str(path),
        "--output",
        output,
        "--max-params",
        str(settings.max_model_params),
        "--memory-bytes",
        str(settings.model_check_memory_bytes),
        "--cpu-seconds",
        str(int(seconds) + 1),
    ]
    # The child gets no database URL or other settings: it needs none.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")  # no GPU for a check
    try:
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ModelFileError(
            f"checking the model took over {seconds:g} s (TRAINYARD_MODEL_CHECK_SECONDS)"
        ) from error
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        crashed = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise ModelFileError(
            f"the check could not build the model (out of memory or a broken file?): "
            f"{crashed[0][:200]}"
        ) from None
    if not result.get("ok"):
        raise ModelFileError(str(result.get("error")))
    return result


def visible_to(user: User) -> ColumnElement[bool]:
    """Architectures `user` may see and train: their own and public ones; an admin, all."""
    if user.is_admin:
        return true()
    return or_(Architecture.owner_id == user.id, Architecture.public.is_(True))


def list_architectures(session: Session, user: User) -> list[Architecture]:
    query = select(Architecture).where(visible_to(user)).order_by(Architecture.id)
    return list(session.scalars(query.options(selectinload(Architecture.owner))))


def get_architecture(session: Session, architecture_id: int, user: User) -> Architecture | None:
    """None when it does not exist or `user` may not see it (the same answer)."""
    return session.scalar(
        select(Architecture).where(Architecture.id == architecture_id, visible_to(user))
    )


def delete_architecture(session: Session, settings: Settings, architecture: Architecture) -> None:
    """Remove it and its file (commits); InUse while a queued, placed or running job names it.
    Locked first, then active jobs looked for, as datasets are (see delete_dataset)."""
    session.commit()
    session.execute(
        update(Architecture)
        .where(Architecture.id == architecture.id)
        .values(name=Architecture.name)
    )
    users = active_jobs_naming(session, "model", architecture.id)
    if users:
        session.rollback()
        raise InUse(architecture.id, users, "model")
    session.execute(delete(Architecture).where(Architecture.id == architecture.id))
    session.commit()
    _drop_unused_file(session, artifact_store(settings), architecture.sha256)


def _drop_unused_file(session: Session, store: ArtifactStore, sha256: str) -> None:
    same = select(func.count()).select_from(Architecture).where(Architecture.sha256 == sha256)
    used = session.scalar(same)
    session.rollback()
    if not used:
        store.delete(architecture_key(sha256))
