"""Reading a trainer's log: from the database, where its supervisor ships it line by line
(job_log_lines), or from a log file (jobs run before logs were stored, the failure message's
tail); the last lines without reading the whole log either way."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.models import Job, LogLine

# A line is cut here when stored: one runaway line must not fill a response or a row.
MAX_LINE_CHARS = 8192


def clean_line(line: str) -> str:
    """A trainer's line as stored: no trailing newline, no NUL (PostgreSQL text refuses it),
    at most MAX_LINE_CHARS characters."""
    line = line.rstrip("\n").replace("\x00", "\ufffd")
    if len(line) > MAX_LINE_CHARS:
        return line[:MAX_LINE_CHARS] + f" [... {len(line) - MAX_LINE_CHARS} more characters]"
    return line


def dropped_marker(job: Job) -> str:
    return (
        f"[... {job.log_dropped} earlier lines dropped: a job keeps its last "
        "TRAINYARD_MAX_LOG_LINES lines ...]\n"
    )


def stored_tail(session: Session, job: Job, lines: int) -> str:
    """The last `lines` stored lines of the job's log, read back along (job_id, id)."""
    newest = session.scalars(
        select(LogLine.line)
        .where(LogLine.job_id == job.id)
        .order_by(LogLine.id.desc())
        .limit(lines)
    ).all()
    text = "".join(f"{line}\n" for line in reversed(newest))
    if job.log_dropped and len(newest) < lines:
        return dropped_marker(job) + text
    return text


def stored_log(session: Session, job: Job, chunk: int = 5000) -> Iterator[str]:
    """The whole stored log, oldest first, in chunks of lines (never all in memory)."""
    if job.log_dropped:
        yield dropped_marker(job)
    after = 0
    while True:
        rows = session.execute(
            select(LogLine.id, LogLine.line)
            .where(LogLine.job_id == job.id, LogLine.id > after)
            .order_by(LogLine.id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        yield "".join(f"{line}\n" for _, line in rows)
        after = rows[-1][0]


_BLOCK = 64 * 1024


# TensorFlow's start-up and C++ chatter, which says nothing about why a training ended.
_NOISE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "  # TF's C++ log lines
    r"|[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ "  # absl's
    r"|WARNING: All log messages before absl"
    r"|.*(oneDNN custom operations|This TensorFlow binary is optimized|To enable the following "
    r"instructions|rebuild TensorFlow with the appropriate|Unable to register cu|TF-TRT Warning"
    r"|computation placer already registered))"
)


def training_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a trainer's log that are not TensorFlow's start-up noise,
    for a failure message: what the training said last."""
    candidates = tail_lines(path, lines * 10).splitlines()
    kept = [line for line in candidates if line.strip() and not _NOISE.match(line)]
    return "\n".join(kept[-lines:])


def tail_lines(path: Path, lines: int) -> str:
    """The last `lines` lines of `path` ("" when it does not exist), read backwards in blocks
    from the end, so a long log costs what the tail costs. Undecodable bytes are replaced."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return ""
    with handle:
        end = handle.seek(0, os.SEEK_END)
        position, data = end, b""
        # One more newline than lines wanted: the text after it is exactly the tail.
        while position > 0 and data.count(b"\n") <= lines:
            step = min(_BLOCK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    kept = data.splitlines(keepends=True)[-lines:] if lines > 0 else []
    return b"".join(kept).decode(errors="replace")
