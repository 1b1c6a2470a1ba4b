"""The client commands: they print what the service says as text, and the local admin
token never leaves this machine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.cli.client import Client, default_token
from app.core.config import get_settings
from tests.e2e.service import add_user, api_client, free_port, processes, service_env, wait_healthy
from tests.keras_files import make_model_files


@pytest.fixture
def admin_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TRAINYARD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("TRAINYARD_TOKEN", raising=False)
    get_settings.cache_clear()
    (tmp_path / "admin-token").write_text("ty_local_admin\n")
    yield "ty_local_admin"
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://127.0.0.2:9", True),
        ("http://[::1]:8000", True),
        ("https://lab-server.example:8000", False),
        ("http://10.0.0.5:8000", False),
    ],
)
def test_the_local_admin_token_goes_only_to_this_machine(
    admin_token_file: str, url: str, sent: bool
) -> None:
    assert default_token(url) == (admin_token_file if sent else None)
    header = Client(url).http.headers.get("authorization")
    assert header == (f"Bearer {admin_token_file}" if sent else None)


def test_an_explicit_token_goes_wherever_it_is_told(
    admin_token_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINYARD_TOKEN", "ty_mine")
    assert default_token("https://lab-server.example:8000") == "ty_mine"


def test_client_commands_print_text_and_manage_datasets_and_models(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(data_dir, url=base_url)
    token = add_user(env, "operator", admin=True)
    names = ["[/evil]", "[bold red]loud[/bold red]", "plain"]

    def trainyard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env={**env, "TRAINYARD_TOKEN": token, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
        )

    rng = np.random.default_rng(0)
    archive = tmp_path / "tiny.npz"
    np.savez(
        archive,
        x_train=rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8),
        y_train=np.arange(20) % 2,
        x_test=rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8),
        y_test=np.arange(6) % 2,
    )
    with processes([["api", "--port", str(port)]], env, tmp_path / "logs"):
        wait_healthy(base_url)
        with api_client(base_url, token) as client:
            ids = [client.post("/jobs", json={"name": n, "gpus": 0}).json()["id"] for n in names]
            client.post(f"/jobs/{ids[-1]}/cancel")
        shown = trainyard("status")
        deleted = trainyard("delete", str(ids[-1]))
        uploaded = trainyard("datasets", "upload", str(archive), "--name", "[tiny]", "--public")
        listed = trainyard("datasets", "list")
        dropped = trainyard("datasets", "delete", "1")
        after = trainyard("datasets", "list")
        marker, info = make_model_files(tmp_path / "models")
        model_up = trainyard("models", "upload", str(tmp_path / "models" / "cnn.keras"))
        model_refused = trainyard("models", "upload", str(tmp_path / "models" / "lambda.keras"))
        models = trainyard("models", "list")
        model_dropped = trainyard("models", "delete", "1")
    # Text, not markup: a job named "[/evil]" is shown as it is, not parsed.
    assert shown.returncode == 0, shown.stderr
    for name in names:
        assert name in shown.stdout
    assert deleted.returncode == 0 and f"job {ids[-1]} deleted" in deleted.stdout
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    assert "dataset 1 [tiny]: 20 train / 6 test images of 8x8x1, 2 classes (public)" in (
        uploaded.stdout.replace("\n", "")
    )
    assert listed.returncode == 0 and "[tiny]" in listed.stdout and "operator" in listed.stdout
    assert dropped.returncode == 0 and "[tiny]" not in after.stdout
    assert model_up.returncode == 0, model_up.stdout + model_up.stderr
    assert f"model 1 cnn.keras: {info['cnn_params']:,} parameters" in model_up.stdout
    assert model_refused.returncode != 0 and "'planted' is a Lambda" in model_refused.stdout
    assert not marker.exists()
    assert models.returncode == 0 and "resnet20" in models.stdout and "cnn.keras" in models.stdout
    assert model_dropped.returncode == 0 and "model 1 deleted" in model_dropped.stdout
