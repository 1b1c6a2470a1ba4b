"""What `trainyard up` needs to be the only owner of its processes: children that end when
it ends however it ends (SIGKILL included), one `up` per data directory, and a clear refusal
when its port is taken."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO

from worker.procfs import listening_on

_PR_SET_PDEATHSIG = 1


def dies_with(parent_pid: int) -> Callable[[], None]:
    """A `preexec_fn` for Popen: the child gets SIGTERM when `parent_pid` ends, by any
    means. (Linux's parent-death signal; runs between fork and exec and survives exec.)"""

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os._exit(1)

    return arm


class AlreadyServing(Exception):
    """Another `trainyard up` holds this data directory."""


def hold_data_dir(data_dir: Path) -> IO[str]:
    """Lock `data_dir` for this process (kept until it exits, however it exits: the kernel
    drops the lock with the last descriptor, which children do not inherit). Raises
    AlreadyServing naming the process that holds it."""
    handle = open(data_dir / "up.lock", "a+")  # noqa: SIM115 (held for the process's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyServing(
            f"another `trainyard up` (pid {holder}) is serving {data_dir}; stop it first, or "
            "set TRAINYARD_DATA_DIR to another directory"
        ) from error
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def port_taken(host: str, port: int) -> str | None:
    """None when `host:port` can be listened on; else why not, naming who holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            holders = listening_on(port)
            who = (
                "; ".join(f"pid {p.pid}: {' '.join(p.argv)[:200]}" for p in holders)
                if holders
                else "a process this user cannot see"
            )
            return f"cannot listen on {host}:{port} ({error.strerror}); it is held by {who}"
    return None
