"""A small tmpfs for tests of a full disk: mounted for the test, filled on request, unmounted
after. Needs the right to mount (root, as on CI); elsewhere the tests using it skip."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "16m") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a full-disk test: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Write a ballast file until the file system has no byte left."""
    ballast = folder / "ballast"
    with ballast.open("wb", buffering=0) as out:  # unbuffered: nothing left to flush
        for block in (65536, 4096, 1):  # then what is left of the last blocks
            with contextlib.suppress(OSError):
                while out.write(b"\0" * block):
                    pass
    return ballast
