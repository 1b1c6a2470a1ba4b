"""The API and the Celery side never import TensorFlow or Keras (DESIGN: only the
trainer's child process does), so the API starts fast and its image needs no CUDA."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
import {modules}
from fastapi.testclient import TestClient
from app.main import app
client = TestClient(app)
client.get("/openapi.json")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print(",".join(loaded))
"""


@pytest.mark.parametrize(
    "modules",
    ["app.main, app.cli", "worker.celery_app, worker.tasks, worker.supervisor"],
)
def test_process_never_imports_tensorflow(modules: str, tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(modules=modules)],
        capture_output=True,
        text=True,
        check=True,
        env={"TRAINYARD_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip() == "", f"loaded: {result.stdout.strip()}"
