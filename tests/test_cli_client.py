"""The client commands: they print what the service says as text, and the local admin
token never leaves this machine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli.client import Client, default_token
from app.core.config import get_settings
from tests.e2e.service import add_user, api_client, free_port, processes, service_env, wait_healthy


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


def test_status_shows_job_names_as_text_not_markup(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(data_dir, url=base_url)
    token = add_user(env, "operator", admin=True)
    names = ["[/evil]", "[bold red]loud[/bold red]", "plain"]
    with processes([["api", "--port", str(port)]], env, tmp_path / "logs"):
        wait_healthy(base_url)
        with api_client(base_url, token) as client:
            for name in names:
                assert client.post("/jobs", json={"name": name, "gpus": 0}).status_code == 201
        shown = subprocess.run(
            [sys.executable, "-m", "app.cli", "status"],
            env={**env, "TRAINYARD_TOKEN": token, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert shown.returncode == 0, shown.stderr
    for name in names:
        assert name in shown.stdout
