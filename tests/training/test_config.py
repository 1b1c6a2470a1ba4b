"""Settings, flags and checkpoint files: the parts of the trainer that need no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worker.training.__main__ import build_parser, config_from_args
from worker.training.checkpoints import CheckpointStore
from worker.training.config import TrainConfig, UserError

from .conftest import trainer_env


def test_defaults_are_the_seed_recipe() -> None:
    config = TrainConfig()
    assert (config.epochs, config.lr, config.batch_size, config.momentum) == (70, 0.005, 64, 0.9)
    assert config.gpus == 1 and config.augment and config.lr_power == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gpus": 2, "cpu_replicas": 2}, "cannot be combined"),
        ({"epochs": 0}, "epochs must be between 1"),
        ({"lr": 0}, "lr must be in (0.0"),
        ({"momentum": 1.5}, "momentum must be in"),
        ({"bn_momentum": 1.0}, "bn_momentum must be in"),
        ({"mixed_precision": "int8"}, "mixed_precision must be one of"),
        ({"lr_scaling": "sqrt"}, "lr_scaling must be one of"),
        ({"dataset": "mnist"}, "neither one of digits"),
        ({"gpus": True}, "gpus must be an integer"),
        ({"batch_size": "64"}, "batch_size must be an integer"),
        ({"model": "resnet"}, "model must be one of"),
    ],
)
def test_invalid_settings_are_user_errors(changes: dict, message: str) -> None:
    with pytest.raises(UserError) as caught:
        TrainConfig(**changes)
    assert message in str(caught.value)


def test_unknown_config_field_is_named() -> None:
    with pytest.raises(UserError, match="unknown config field"):
        TrainConfig.from_dict({"epochs": 3, "learning_rate": 0.1})


def test_poly_decay_and_linear_scaling_with_warmup() -> None:
    seed = TrainConfig(epochs=70, lr=0.005)
    assert seed.learning_rate(0, 4) == pytest.approx(0.005)
    assert seed.learning_rate(35, 4) == pytest.approx(0.0025)
    squared = TrainConfig(epochs=10, lr=0.01, lr_power=2.0)
    assert squared.learning_rate(5, 1) == pytest.approx(0.0025)
    scaled = TrainConfig(epochs=70, lr=0.005, lr_scaling="linear")
    assert scaled.warmup_epochs == 5
    # Warm-up ramps linearly from lr to lr x replicas over 5 epochs, under the poly decay.
    assert scaled.learning_rate(0, 4) == pytest.approx(0.005)
    assert scaled.learning_rate(1, 4) == pytest.approx(0.005 * (1 + 3 * 1 / 5) * (1 - 1 / 70))
    assert scaled.learning_rate(5, 4) == pytest.approx(0.02 * (1 - 5 / 70))
    assert scaled.learning_rate(5, 1) == pytest.approx(0.005 * (1 - 5 / 70))
    short = TrainConfig(epochs=5, lr=0.005, lr_scaling="linear")
    assert short.warmup_epochs == 0 and short.learning_rate(0, 2) == pytest.approx(0.01)


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"epochs": 9, "lr": 0.1, "dataset": "synthetic", "gpus": 0}))
    args = build_parser().parse_args(["--config", str(path), "--lr", "0.2", "--no-augment"])
    config = config_from_args(args)
    assert (config.epochs, config.lr, config.dataset, config.augment) == (
        9,
        0.2,
        "synthetic",
        False,
    )
    assert config.gpus == 0


def test_bad_flag_in_json_mode_is_a_failed_event(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "worker.training", "--json", "--epochs", "many"],
        cwd=tmp_path, env=trainer_env(tmp_path), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    (event,) = [json.loads(line) for line in completed.stdout.splitlines()]
    assert event["event"] == "failed" and event["reason"] == "user_error"
    assert "--epochs" in event["message"]


def test_conflicting_settings_fail_before_tensorflow_loads(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "worker.training", "--gpus", "1", "--cpu-replicas", "2"],
        cwd=tmp_path, env=trainer_env(tmp_path), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1].startswith("error: gpus=1 and cpu_replicas")


def test_checkpoint_store_keeps_two_and_skips_a_corrupt_newest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints")
    for epoch in (1, 2, 3):
        history = [{"epoch": e} for e in range(1, epoch + 1)]
        store.save(epoch, [np.full(3, epoch)], [np.array(epoch * 10)], {"history": history})
    assert store.saved_epochs() == [2, 3]
    latest = store.latest()
    assert latest is not None and latest.epoch == 3
    assert latest.model_weights[0].tolist() == [3, 3, 3]
    assert int(latest.optimizer_variables[0]) == 30
    assert [r["epoch"] for r in latest.history] == [1, 2, 3]
    store.path_for(3).write_bytes(b"torn")
    fallback = store.latest()
    assert fallback is not None and fallback.epoch == 2
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
