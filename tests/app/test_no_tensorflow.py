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


def test_api_application_loads_no_worker_module(tmp_path: object) -> None:
    """Imports flow one way: the API and the worker share only app.core (import-linter
    checks the source; this checks what a running API process really loads)."""
    script = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from app.main import app\n"
        "TestClient(app).get('/openapi.json')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'worker')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"TRAINYARD_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip() == "", f"loaded: {result.stdout.strip()}"


def test_api_docs_load_nothing_from_another_host() -> None:
    import re

    from fastapi.testclient import TestClient

    from app.main import app

    client = TestClient(app)
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), html
        assets = re.findall(r"""(?:src|href)=["']?(/[^"' >]+)""", html)
        assert any(asset.endswith(".js") for asset in assets), html
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
