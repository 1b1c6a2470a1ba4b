"""A full disk, said so a person can act on it: which file, which folder, how much is free.
Shared by the trainer and its supervisor (both write to the data directory)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import TypeGuard

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> TypeGuard[OSError]:
    return isinstance(error, OSError) and error.errno in NO_SPACE


def disk_full_message(error: OSError, where: Path) -> str:
    """`where`: the folder being written in, for errors that name no file (a write or a
    flush to a file already open)."""
    path = Path(str(error.filename or where)).absolute()
    folder = next((p for p in (path, *path.parents) if p.is_dir()), Path("/"))
    try:
        free = f"{shutil.disk_usage(folder).free} bytes free"
    except OSError:
        free = "free space unknown"
    return f"no space left on the device: could not write {path} ({free} in {folder})"


# Space set aside in the data directory for the moment it fills up: freed then, so that the
# failure can still be recorded (the embedded SQLite database lives on the same disk), and
# put back once there is room again.
RESERVE_BYTES = 8 * 1024 * 1024


def reserve_path(data_dir: Path) -> Path:
    return data_dir / ".disk-reserve"


def keep_reserve(data_dir: Path) -> None:
    """Set the reserve aside if it is missing and the disk has room for it four times over."""
    path = reserve_path(data_dir)
    if path.exists():
        return
    try:
        if shutil.disk_usage(data_dir).free < 4 * RESERVE_BYTES:
            return
        with path.open("wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, RESERVE_BYTES)
    except OSError:
        path.unlink(missing_ok=True)


def release_reserve(data_dir: Path) -> bool:
    """Free the reserve (the disk is full); True if there was one to free."""
    try:
        reserve_path(data_dir).unlink()
    except FileNotFoundError:
        return False
    return True
