"""Reading a trainer's log: the last lines without reading the whole file."""

from __future__ import annotations

import os
from pathlib import Path

_BLOCK = 64 * 1024


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
