"""docker-compose.yml and the Dockerfile are kept right by reading them (no Docker engine
here): every command they run must be a real `trainyard` subcommand with real options."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from app.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def check_trainyard_command(argv: list[str]) -> None:
    """Parse `argv` with the real CLI; --help stops it before it would start anything.
    Click parses every option before acting on --help, so an unknown one still fails."""
    assert argv[0] == "trainyard", argv
    result = CliRunner().invoke(cli, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{argv}: {result.output}"


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_production_services() -> None:
    services = compose()["services"]
    assert set(services) >= {"postgres", "redis", "api", "worker"}
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["TRAINYARD_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["TRAINYARD_BROKER_URL"].startswith("redis://")
        assert services[name]["build"]["target"] == name


@pytest.mark.parametrize("service", ["api", "worker"])
def test_compose_commands_exist_in_the_cli(service: str) -> None:
    check_trainyard_command(compose()["services"][service]["command"])


def test_dockerfile_targets_and_commands() -> None:
    text = (ROOT / "Dockerfile").read_text()
    targets = re.findall(r"^FROM \S+ AS (\S+)", text, flags=re.MULTILINE)
    assert {"api", "worker"} <= set(targets)
    api_stage = text.split("AS api")[1].split("FROM ")[0]
    worker_stage = text.split("AS worker")[1]
    assert "[gpu]" not in api_stage and "[cpu]" not in api_stage  # the API image has no TF
    assert '".[gpu]"' in worker_stage
    for command in re.findall(r"^CMD (\[.*\])$", text, flags=re.MULTILINE):
        check_trainyard_command(yaml.safe_load(command))


def test_a_wrong_command_is_caught() -> None:
    with pytest.raises(AssertionError, match="serve"):
        check_trainyard_command(["trainyard", "serve"])
    with pytest.raises(AssertionError, match="listen"):
        check_trainyard_command(["trainyard", "api", "--listen", "0.0.0.0"])


def test_compose_takes_the_database_password_from_env_and_ships_none() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    services = compose()["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    url = services["api"]["environment"]["TRAINYARD_DATABASE_URL"]
    assert ":${POSTGRES_PASSWORD:?" in url
    assert "trainyard:trainyard@" not in text
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=\S+", example, flags=re.MULTILINE)
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    # The API listens on this host only; a TLS proxy in front serves the network.
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]


def test_the_images_run_as_a_user_not_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for stage in ("api", "worker"):
        body = text.split(f"AS {stage}")[1].split("FROM ")[0]
        users = re.findall(r"^USER (\S+)$", body, flags=re.MULTILINE)
        assert users and users[-1] not in ("root", "0"), stage
