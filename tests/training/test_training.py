"""End-to-end trainings through `python -m worker.training --json`, as the supervisor runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from .conftest import FAST, parse_events, small_npz, trainer_env

pytestmark = pytest.mark.training


def test_minigooglenet_has_the_seed_parameter_count() -> None:
    import keras

    from worker.training.models import build_minigooglenet

    model = build_minigooglenet((32, 32, 3), 10)
    assert model.count_params() == 1_656_250
    # Keras' own BatchNormalization (the benchmark's --batch-norm stock) builds the same net.
    stock = build_minigooglenet((32, 32, 3), 10, batch_norm=keras.layers.BatchNormalization)
    assert stock.count_params() == 1_656_250
    names = {type(layer).__name__ for layer in stock.layers}
    assert "BatchNormalization" in names and "FusedBatchNormalization" not in names
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = build_minigooglenet((32, 32, 3), 10)
        # The softmax must stay float32 under mixed precision; the convs compute in bfloat16.
        assert mixed.layers[-1].compute_dtype == "float32"
        assert mixed.layers[1].compute_dtype == "bfloat16"
        assert mixed.count_params() == 1_656_250
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(ValueError, match="32x32"):
        build_minigooglenet((28, 28, 1), 10)


def test_two_cpu_replicas_train_and_keep_two_checkpoints(trainer, tmp_path: Path) -> None:
    run = trainer(
        *FAST,
        "--cpu-replicas", "2", "--dataset", small_npz(tmp_path / "small.npz"), "--epochs", "3",
        "--batch-size", "16", "--workdir", "run",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    started = run.one("started")
    assert started["replicas"] == 2
    assert started["devices"] == ["/cpu:0", "/cpu:1"]
    assert started["global_batch"] == 32
    assert started["steps_per_epoch"] == 64 // 32
    assert started["params"] == 1_656_250
    assert started["initial_epoch"] == 0
    assert started["workdir"] == str((tmp_path / "run").resolve())
    epochs = run.of("epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert all(e["replicas"] == 2 and e["replayed"] is False for e in epochs)
    # The seed's poly decay, power 1: base * (1 - e / epochs) for 0-based e.
    assert [e["lr"] for e in epochs] == pytest.approx([0.005, 0.005 * 2 / 3, 0.005 / 3])
    assert all(np.isfinite(e["val_loss"]) and e["seconds"] > 0 for e in epochs)
    finished = run.one("finished")
    assert finished["epochs"] == 3
    with zipfile.ZipFile(finished["model_path"]) as saved:
        saved_config = json.loads(saved.read("config.json"))
    layers = saved_config["config"]["layers"]
    # The defaults train the seed's way: SGD with momentum 0.9, no weight decay, the
    # (sparse) categorical cross-entropy, no label smoothing.
    compiled = saved_config["compile_config"]
    optimizer = compiled["optimizer"]
    assert optimizer["class_name"] == "SGD"
    assert (optimizer["config"]["momentum"], optimizer["config"]["nesterov"]) == (0.9, False)
    assert optimizer["config"]["weight_decay"] is None
    assert compiled["loss"] == "sparse_categorical_crossentropy"
    # The download holds stock Keras layers only (see worker/training/layers.py).
    assert sum(layer["class_name"] == "BatchNormalization" for layer in layers) == 19
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["epoch-0002.npz", "epoch-0003.npz"]


def test_resume_after_sigkill_records_every_epoch_once(tmp_path: Path) -> None:
    epochs, kill_after = 4, 2
    command = [
        sys.executable, "-m", "worker.training", "--json", *FAST,
        "--dataset", small_npz(tmp_path / "small.npz"), "--epochs", str(epochs),
        "--batch-size", "32",
        "--workdir", "run", "--seed", "7",
    ]  # fmt: skip
    first = subprocess.Popen(
        command, cwd=tmp_path, env=trainer_env(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    first_events = []
    assert first.stdout is not None
    try:
        for line in first.stdout:
            event = json.loads(line)
            first_events.append(event)
            if event["event"] == "epoch" and event["epoch"] == kill_after:
                first.send_signal(signal.SIGKILL)
                break
    finally:
        first.kill()
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    kinds = [(e["event"], e.get("epoch")) for e in first_events]
    # The checkpoint is written, and announced, before its epoch.
    assert kinds.index(("checkpoint", 1)) < kinds.index(("epoch", 1))

    second = subprocess.run(
        command, cwd=tmp_path, env=trainer_env(tmp_path), capture_output=True, text=True,
        timeout=150, check=False,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    second_events = parse_events(second.stdout)
    started = next(e for e in second_events if e["event"] == "started")
    assert started["initial_epoch"] >= kill_after
    replayed = [e for e in second_events if e["event"] == "epoch" and e["replayed"]]
    assert [e["epoch"] for e in replayed] == list(range(1, started["initial_epoch"] + 1))

    # Dedupe as a supervisor would: the first record of each epoch wins.
    recorded: dict[int, dict] = {}
    for event in first_events + second_events:
        if event["event"] == "epoch":
            recorded.setdefault(event["epoch"], event)
    assert sorted(recorded) == list(range(1, epochs + 1))
    fresh = [e for e in second_events if e["event"] == "epoch" and not e["replayed"]]
    assert [e["epoch"] for e in fresh] == list(range(started["initial_epoch"] + 1, epochs + 1))
    # The LR schedule continues where it stopped: epoch k+1 uses base * (1 - k / epochs).
    for event in fresh:
        assert event["lr"] == pytest.approx(0.005 * (1 - (event["epoch"] - 1) / epochs))
    assert [e["event"] for e in second_events][-1] == "finished"


def test_huge_learning_rate_fails_with_nan_loss(trainer, tmp_path: Path) -> None:
    # The spec allows lr <= 10, and at 10 float32 and bfloat16 runs do not diverge: BatchNorm
    # makes the net scale-invariant and the loss settles (measured on synthetic, float32:
    # epoch losses 159, 76, 11, 5.4, 4.0). float16's range ends at 65504: at lr 1 or 10 the
    # activations overflow within the first epoch (seeds 1, 2, 6: validation loss NaN at
    # epoch 1) while lr 0.005 trains. A small file, because float16 is emulated on the CPU
    # (synthetic's 256 images: ~18 s an epoch); four epochs leave room for a slower blow-up.
    rng = np.random.default_rng(0)
    path = tmp_path / "small.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(64) % 4,
        x_test=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(16) % 4,
    )
    run = trainer(
        "--gpus", "0", "--mixed-precision", "float16", "--dataset", str(path),
        "--batch-size", "16", "--epochs", "4", "--lr", "10", "--seed", "6",
    )  # fmt: skip
    assert run.returncode == 3, run.stderr[-3000:]
    failed = run.one("failed")
    assert failed["reason"] == "nan_loss"
    assert "lower the learning rate (lr=" in failed["message"]
    assert "epoch" in failed["message"]
    assert not run.of("finished")


def test_gpus_on_a_machine_without_them_is_a_user_error(trainer) -> None:
    run = trainer("--gpus", "1", "--dataset", "synthetic", "--epochs", "1")
    assert run.returncode == 2
    failed = run.one("failed")
    assert failed["reason"] == "user_error"
    assert "needs 1 GPUs, 0 visible" in failed["message"]
    assert not run.of("started")


def test_cifar10_offline_names_the_file_and_folder(trainer, tmp_path: Path) -> None:
    run = trainer(*FAST, "--dataset", "cifar10", "--epochs", "1")
    assert run.returncode == 2
    failed = run.one("failed")
    assert failed["reason"] == "user_error"
    assert "cifar-10-python.tar.gz" in failed["message"]
    assert str(tmp_path / "data" / "datasets") in failed["message"]


def test_good_npz_trains_one_epoch_resized_to_32(trainer, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "small.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (64, 16, 16, 1), dtype=np.uint8),
        y_train=np.arange(64) % 4,
        x_test=rng.random((16, 16, 16, 1), dtype=np.float32),
        y_test=(np.arange(16) % 4).reshape(-1, 1),
    )
    run = trainer(
        *FAST, "--dataset", str(path), "--epochs", "1", "--batch-size", "16",
        "--bn-momentum", "0.99",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    started = run.one("started")
    assert started["bn_momentum"] == 0.99  # as given, although "auto" would pick 0.9 here
    assert started["input_shape"] == [32, 32, 1]
    assert started["classes"] == 4
    assert (started["train_images"], started["test_images"]) == (64, 16)
    assert [e["epoch"] for e in run.of("epoch")] == [1]
    assert run.one("finished")["epochs"] == 1


def test_malformed_npz_is_a_user_error_naming_the_key(trainer, tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((8, 16, 16, 3), np.uint8), y_train=np.arange(8) % 2)
    run = trainer(*FAST, "--dataset", str(path), "--epochs", "1")
    assert run.returncode == 2
    assert "missing key x_test" in run.one("failed")["message"]


def test_runs_without_workdir_each_train_from_scratch_in_a_new_folder(
    trainer, tmp_path: Path
) -> None:
    # First run: human mode, as a person runs it, writing the plot.
    completed = subprocess.run(
        [
            sys.executable, "-m", "worker.training", *FAST, "--dataset", "synthetic",
            "--model", "mlp", "--epochs", "1", "--output", "plot.png",
        ],
        cwd=tmp_path, env=trainer_env(tmp_path), capture_output=True, text=True, timeout=150,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "Epoch 1/1 - " in out and "resuming" not in out and "from checkpoint" not in out
    for metric in ("loss: ", "accuracy: ", "val_loss: ", "val_accuracy: "):
        assert metric in out
    assert "BatchNormalization momentum 0.9," in out  # "auto": synthetic's 4 batches of 64
    assert '{"event"' not in out
    # The new run folder is named on stdout before training starts.
    (first_folder,) = (tmp_path / "trainyard-runs").iterdir()
    announced = f"[INFO] run folder trainyard-runs/{first_folder.name} "
    assert announced in out and out.index(announced) < out.index("Epoch 1/1")
    assert (first_folder / "model.keras").is_file()
    plot = tmp_path / "plot.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 10_000  # a real chart, not an empty canvas

    # Second run, same command and directory, --json: trains again, in a folder of its own.
    run = trainer(*FAST, "--dataset", "synthetic", "--model", "mlp", "--epochs", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    started = run.one("started")
    assert started["initial_epoch"] == 0
    assert [e["replayed"] for e in run.of("epoch")] == [False]
    second_folder = Path(started["workdir"])
    assert second_folder.parent == first_folder.parent.resolve()
    assert second_folder.name != first_folder.name
    # --json: the folder is named on stderr, stdout carries events only.
    assert f"[INFO] run folder trainyard-runs/{second_folder.name} " in run.stderr


def test_exits_when_stdin_closes(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable, "-m", "worker.training", "--json", "--exit-on-stdin-eof", *FAST,
            "--dataset", "synthetic", "--epochs", "1000", "--workdir", "run",
        ],
        cwd=tmp_path, env=trainer_env(tmp_path), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    try:
        first = json.loads(process.stdout.readline())
        assert first["event"] == "started"
        # bn_momentum "auto" on synthetic's 256 images at batch 64: 4 batches, so 0.9.
        assert (first["steps_per_epoch"], first["bn_momentum"]) == (4, 0.9)
        process.stdin.close()  # what the OS does when the supervisor dies
        started = time.monotonic()
        process.wait(timeout=20)
        assert time.monotonic() - started < 20
        assert process.returncode != 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
