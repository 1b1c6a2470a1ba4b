"""Running the scripts of bench/ from tests, which only keep them from rotting (their
figures are measured by hand: see BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, *args: str, cwd: Path | None = None, timeout: float = 240) -> Any:
    """bench/`script` with `args` in a fresh interpreter: the JSON line it prints last."""
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
