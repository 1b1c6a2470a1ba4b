"""The one reader of /proc: which processes exist, their process groups and command lines.

Used to tell our trainers' processes from foreign ones on a GPU, and to find a trainer left
behind by a worker that died. Where there is no /proc (not Linux), nothing is found.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    pgid: int
    state: str  # "R", "S", ..., "Z" for a zombie
    argv: tuple[str, ...]


def processes() -> Iterator[ProcessInfo]:
    """Every process we may read; those that end while we look are skipped."""
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # ended, or not ours to read
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and ")", so split after the
        # last ")".
        fields = stat.rpartition(")")[2].split()
        if len(fields) < 3 or not (fields[1].isdigit() and fields[2].lstrip("-").isdigit()):
            continue
        argv = tuple(part.decode(errors="replace") for part in cmdline.split(b"\0") if part)
        yield ProcessInfo(int(entry.name), int(fields[1]), int(fields[2]), fields[0], argv)


def pids_in_process_groups(pgids: set[int]) -> set[int]:
    """All live PIDs whose process group is one of `pgids`."""
    if not pgids:
        return set()
    return {process.pid for process in processes() if process.pgid in pgids}


def trainers_in(workdir: Path) -> list[ProcessInfo]:
    """Live trainer processes working in `workdir`: the supervisor starts every trainer with
    `--workdir <job folder>`, whatever the trainer command is."""
    marker = str(workdir)
    found = []
    for process in processes():
        argv = process.argv
        named = any(argv[i] == "--workdir" and argv[i + 1] == marker for i in range(len(argv) - 1))
        if named and process.state != "Z":
            found.append(process)
    return found


def group_alive(pgid: int) -> bool:
    """Whether process group `pgid` still has a process that is not a zombie. A zombie has
    freed its memory and GPU context; it lingers only until its parent reaps it, and that
    parent may not be ours (a container whose PID 1 never reaps), so it does not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, though not ours to signal
    if not PROC.is_dir():  # no /proc to tell zombies apart: the signal's answer stands
        return True
    return any(p.pgid == pgid and p.state != "Z" for p in processes())


def listening_on(port: int) -> list[ProcessInfo]:
    """Processes we may read that hold a TCP socket listening on `port` (any address)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is "HEXADDR:HEXPORT"; state 0A is LISTEN; field 9 the inode.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":")[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    for process in processes():
        try:
            fds = os.scandir(PROC / str(process.pid) / "fd")
            with fds:
                if any(_link(entry.path) in wanted for entry in fds):
                    holders.append(process)
        except OSError:  # ended, or not ours to read
            continue
    return holders


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def boot_time() -> float | None:
    """When this machine booted (seconds since the epoch), from /proc/stat's btime."""
    try:
        for line in (PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


CGROUP_ROOT = Path("/sys/fs/cgroup")


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed in this process's memory
    cgroup (which children like our trainers share): cgroup v2 `memory.events` or v1
    `memory.oom_control`. In a container the cgroup's own folder is the mount's root. None
    where neither can be read: a SIGKILL then cannot be pinned on the OOM killer."""
    try:
        lines = (PROC / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # v2, unified
            for base in (CGROUP_ROOT / relative, CGROUP_ROOT):
                candidates.append(base / "memory.events")
        elif "memory" in controllers.split(","):
            for base in (CGROUP_ROOT / "memory" / relative, CGROUP_ROOT / "memory"):
                candidates.append(base / "memory.oom_control")
    for candidate in candidates:
        try:
            text = candidate.read_text()
        except OSError:
            continue
        for entry in text.splitlines():
            name, _, value = entry.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


def descendants(root: int) -> list[ProcessInfo]:
    """Live (not zombie) processes below `root`: its children, theirs, and so on."""
    table = [p for p in processes() if p.state != "Z"]
    found: list[ProcessInfo] = []
    frontier = {root}
    while frontier:
        children = [p for p in table if p.ppid in frontier]
        found += children
        frontier = {p.pid for p in children}
    return found
