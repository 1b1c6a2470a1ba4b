"""Helpers to run the trainer as a real subprocess and read its JSON-line events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
# Fast settings for a 2-core CI machine: `auto` trains in bfloat16 where the CPU computes it
# natively (AVX-512 BF16 or AMX: ~2x float32) and in float32 elsewhere. Forcing bfloat16 on
# an AVX2-only CPU emulates it: trainings ran 5-10x slower and the e2e tests timed out.
FAST = ["--gpus", "0", "--mixed-precision", "auto"]


def small_npz(path: Path) -> str:
    """A dataset file of 64 training and 16 test random 32x32 RGB images of 10 classes (a
    quarter of synthetic's 256), for tests of the run's mechanics (replicas, checkpoints,
    resuming) rather than of learning."""
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(64) % 10,
        x_test=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(16) % 10,
    )
    return str(path)


@dataclass
class Run:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    stdout_lines: list[str] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of(kind)
        assert len(found) == 1, f"expected one {kind} event, got {found}\n{self.stderr[-3000:]}"
        return found[0]


def trainer_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TRAINYARD_DATA_DIR"] = str(tmp_path / "data")
    env["KERAS_HOME"] = str(tmp_path / "keras")  # no cached downloads from the host
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def parse_events(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line must be one JSON event: that is the protocol."""
    events = []
    for line in stdout.splitlines():
        event = json.loads(line)
        assert isinstance(event, dict) and "event" in event, line
        events.append(event)
    return events


def run_trainer(tmp_path: Path, *args: str, timeout: float = 150) -> Run:
    completed = subprocess.run(
        [sys.executable, "-m", "worker.training", "--json", *args],
        cwd=tmp_path,
        env=trainer_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(completed.returncode, parse_events(completed.stdout), completed.stderr)


@pytest.fixture
def trainer(tmp_path: Path):
    def run(*args: str, timeout: float = 150) -> Run:
        return run_trainer(tmp_path, *args, timeout=timeout)

    return run
