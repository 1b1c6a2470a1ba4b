"""Settings an operator sets: renamed variables keep working, with a warning."""

from __future__ import annotations

import pytest

from app.core.config import Settings, get_settings


def test_max_lost_runs_is_read_under_its_old_name_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRAINYARD_MAX_LOST_RUNS", raising=False)
    monkeypatch.setenv("TRAINYARD_MAX_ATTEMPTS", "5")
    get_settings.cache_clear()
    try:
        with pytest.warns(FutureWarning, match="TRAINYARD_MAX_LOST_RUNS"):
            assert get_settings().max_lost_runs == 5
        monkeypatch.setenv("TRAINYARD_MAX_LOST_RUNS", "7")  # the new name wins
        assert Settings().max_lost_runs == 7
    finally:
        get_settings.cache_clear()


def test_the_new_name_alone_gives_no_warning(
    monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    monkeypatch.delenv("TRAINYARD_MAX_ATTEMPTS", raising=False)
    monkeypatch.setenv("TRAINYARD_MAX_LOST_RUNS", "4")
    get_settings.cache_clear()
    try:
        assert get_settings().max_lost_runs == 4
    finally:
        get_settings.cache_clear()
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_trainer_command_is_split_like_a_shell_and_defaults_to_this_python() -> None:
    assert Settings(trainer_command="nice -n 5 'my trainer'").trainer_argv() == [
        "nice",
        "-n",
        "5",
        "my trainer",
    ]
    assert Settings().trainer_argv()[1:] == ["-m", "worker.training"]
