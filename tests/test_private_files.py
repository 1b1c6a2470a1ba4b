"""What Trainyard writes is private to the account that runs it: the data directory 0700,
its files 0600, also where an older version left the directory open."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_command_creates_a_private_data_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)  # as an earlier version left it
    os.chmod(data_dir, 0o755)
    env = {**os.environ, "TRAINYARD_DATA_DIR": str(data_dir)}
    env = {k: v for k, v in env.items() if k not in ("TRAINYARD_DATABASE_URL",)}
    subprocess.run(
        [sys.executable, "-m", "app.cli", "user", "add", "ops"],
        env=env,
        check=True,
        capture_output=True,
        # The operator's shell may have any umask: Trainyard sets its own.
        preexec_fn=lambda: os.umask(0o022),
    )
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "trainyard.db") == 0o600
    for path in data_dir.rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
