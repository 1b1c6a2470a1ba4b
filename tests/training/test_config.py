"""Settings, flags and checkpoint files: the parts of the trainer that need no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from app.core.spec import JobSpec, TrainingSpec, resolve_weight_decay
from worker.training.__main__ import build_parser, config_from_args, new_run_folder
from worker.training.checkpoints import CheckpointStore
from worker.training.config import UserError, learning_rate, load_config, warmup_epochs

from .conftest import trainer_env


def test_defaults_are_the_seed_recipe() -> None:
    config = load_config({})
    assert (config.epochs, config.lr, config.batch_size, config.momentum) == (70, 0.005, 64, 0.9)
    assert config.gpus == 1 and config.augment == "shift_flip" and config.lr_power == 1.0
    assert (config.model, config.optimizer, config.label_smoothing) == ("minigooglenet", "sgd", 0)
    assert resolve_weight_decay(config) == 0  # the seed: plain SGD with momentum, no decay


def test_augment_takes_the_old_switch_too() -> None:
    # Specs stored, and scripts written, when augment was true or false.
    assert load_config({"augment": True}).augment == "shift_flip"
    assert load_config({"augment": False}).augment == "none"
    with pytest.raises(UserError, match="augment"):
        load_config({"augment": "crop"})


def test_trainer_defaults_are_the_services() -> None:
    # The trainer run with no flags trains what a job submitted with an empty body would.
    config = config_from_args(build_parser().parse_args([]))
    assert config.training_fields() == JobSpec().training_fields()
    assert config.dataset == "cifar10"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gpus": 2, "cpu_replicas": 2}, "cpu_replicas: cpu_replicas needs gpus = 0"),
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
        ({"epochs": 1001}, "epochs: Input should be less than or equal to 1000"),
        ({"batch_size": 4097}, "batch_size: Input should be less than or equal to 4096"),
        ({"cpu_replicas": 17, "gpus": 0}, "cpu_replicas: Input should be less than or equal"),
        ({"lr": 0}, "lr: Input should be greater than 0"),
        ({"lr": 11}, "lr: Input should be less than or equal to 10"),
        ({"lr_power": 10.5}, "lr_power: Input should be less than or equal to 10"),
        ({"momentum": 1.5}, "momentum: Input should be less than or equal to 1"),
        ({"bn_momentum": 1.0}, "bn_momentum: Input should be 'auto' or Input should be less"),
        ({"mixed_precision": "int8"}, "mixed_precision: Input should be 'auto'"),
        ({"lr_scaling": "sqrt"}, "lr_scaling: Input should be 'none' or 'linear'"),
        ({"dataset": "mnist"}, "dataset: 'mnist' is neither one of cifar10, digits"),
        ({"gpus": True}, "gpus: Input should be a valid integer"),
        ({"batch_size": "64"}, "batch_size: Input should be a valid integer"),
        ({"model": "resnet"}, "model: 'resnet' is neither one of minigooglenet, resnet20"),
        ({"learning_rate": 0.1}, "learning_rate: Extra inputs are not permitted"),
        ({"name": "x"}, "name: only the service takes this field"),
    ],
)
def test_invalid_settings_are_user_errors_naming_the_field(changes: dict, message: str) -> None:
    with pytest.raises(UserError) as caught:
        load_config(changes)
    assert message in str(caught.value)


def test_every_field_at_fault_is_named() -> None:
    with pytest.raises(UserError) as caught:
        load_config({"epochs": 1001, "lr": -1})
    assert str(caught.value) == (
        "epochs: Input should be less than or equal to 1000; lr: Input should be greater than 0"
    )


def test_a_local_npz_path_is_a_dataset_for_the_trainer_only() -> None:
    assert load_config({"dataset": "data/mine.npz"}).dataset == "data/mine.npz"
    with pytest.raises(ValueError, match="an uploaded dataset's id"):
        TrainingSpec.model_validate({"dataset": "data/mine.npz"})


def test_an_uploaded_dataset_id_is_refused_outside_the_service() -> None:
    # Refused with the other settings, before TensorFlow loads.
    with pytest.raises(UserError, match=r"dataset: 3 is an uploaded dataset's id.*\.npz file"):
        load_config({"dataset": 3})


def test_poly_decay_and_linear_scaling_with_warmup() -> None:
    seed = TrainingSpec(epochs=70, lr=0.005)
    assert learning_rate(seed, 0, 4) == pytest.approx(0.005)
    assert learning_rate(seed, 35, 4) == pytest.approx(0.0025)
    squared = TrainingSpec(epochs=10, lr=0.01, lr_power=2.0)
    assert learning_rate(squared, 5, 1) == pytest.approx(0.0025)
    scaled = TrainingSpec(epochs=70, lr=0.005, lr_scaling="linear")
    assert warmup_epochs(scaled) == 5
    # Warm-up ramps linearly from lr to lr x replicas over 5 epochs, under the poly decay.
    assert learning_rate(scaled, 0, 4) == pytest.approx(0.005)
    assert learning_rate(scaled, 1, 4) == pytest.approx(0.005 * (1 + 3 * 1 / 5) * (1 - 1 / 70))
    assert learning_rate(scaled, 5, 4) == pytest.approx(0.02 * (1 - 5 / 70))
    assert learning_rate(scaled, 5, 1) == pytest.approx(0.005 * (1 - 5 / 70))
    short = TrainingSpec(epochs=5, lr=0.005, lr_scaling="linear")
    assert warmup_epochs(short) == 0 and learning_rate(short, 0, 2) == pytest.approx(0.01)


def test_run_folders_are_new_per_run(tmp_path: Path) -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = new_run_folder(tmp_path / "runs", now)
    second = new_run_folder(tmp_path / "runs", now)
    assert first == tmp_path / "runs" / "20250102T030405Z"
    assert second == tmp_path / "runs" / "20250102T030405Z-2"
    assert first.is_dir() and second.is_dir()


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"epochs": 9, "lr": 0.1, "dataset": "synthetic", "gpus": 0}))
    args = build_parser().parse_args(["--config", str(path), "--lr", "0.2", "--augment", "none"])
    config = config_from_args(args)
    assert (config.epochs, config.lr, config.dataset, config.augment) == (
        9,
        0.2,
        "synthetic",
        "none",
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
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: cpu_replicas: cpu_replicas needs gpus = 0 (got gpus=1)")


@pytest.mark.parametrize(
    ("flags", "field", "bound"),
    [
        (["--epochs", "1001"], "epochs", 1000),
        (["--batch-size", "4097"], "batch_size", 4096),
        (["--lr", "11"], "lr", 10),
    ],
)
def test_out_of_bounds_flag_fails_in_json_mode_before_tensorflow_loads(
    tmp_path: Path, flags: list[str], field: str, bound: int
) -> None:
    # -X importtime lists every module the process imported, on stderr.
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "worker.training", "--json",
         "--dataset", "synthetic", *flags],
        cwd=tmp_path, env=trainer_env(tmp_path), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    (event,) = [json.loads(line) for line in completed.stdout.splitlines()]
    assert event["event"] == "failed" and event["reason"] == "user_error"
    assert event["message"] == f"{field}: Input should be less than or equal to {bound}"
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in completed.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "worker.training.config" in imported  # the list is the trainer's
    assert not {"tensorflow", "keras"} & imported
    assert not (tmp_path / "trainyard-runs").exists()  # no run folder for a run that never ran


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


def test_a_checkpoint_that_does_not_fit_on_the_disk_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    from tests.full_disk import small_tmpfs

    with small_tmpfs(tmp_path / "disk", size="1m") as disk:
        store = CheckpointStore(disk / "checkpoints")
        store.save(1, [np.zeros(10)], [], {"history": []})
        with pytest.raises(OSError, match="No space left"):
            store.save(2, [np.zeros(400_000)], [], {"history": []})  # 3.2 MB
        assert sorted(p.name for p in (disk / "checkpoints").iterdir()) == ["epoch-0001.npz"]
