"""What every deployment must do, run against a live API and worker."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.e2e.service import TERMINAL, trainer_pids, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"

# Small and fast: synthetic data, 3 epochs, on the CPU, with the zoo's MLP. These tests are
# about the service (queue, events, files, restarts), not the recipe (tests/training trains
# MiniGoogLeNet): on an AVX2-only 2-core CPU a MiniGoogLeNet epoch of synthetic takes 15-20 s,
# the MLP's under 2 s.
SMALL_JOB = {
    "dataset": "synthetic",
    "epochs": 3,
    "gpus": 0,
    "model": "mlp",
    "mixed_precision": "auto",
}


def job_succeeds_with_every_epoch_once(
    client: httpx.Client, spec: dict[str, Any] = SMALL_JOB
) -> dict[str, Any]:
    """Submit `spec` (3 epochs, on the CPU) and check everything a finished job offers;
    returns the finished job."""
    response = client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    # The README's job trains MiniGoogLeNet on digits: 3-4 minutes on an AVX2-only 2-core CPU.
    job: dict[str, Any] = wait_for(client, job_id, lambda j: j["status"] in TERMINAL, timeout=600)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 1
    assert job["current_epoch"] == 3
    assert job["replicas"] == 1
    metrics = client.get(f"/jobs/{job_id}/metrics").json()
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    for record in metrics:
        for name in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"):
            assert record[name] is not None, (name, record)
    # The seed's linear decay: each epoch's LR below the one before.
    lrs = [m["lr"] for m in metrics]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == spec.get("lr", 0.005)
    plot = client.get(f"/jobs/{job_id}/plot.png")
    assert plot.content.startswith(b"\x89PNG")
    model = client.get(f"/jobs/{job_id}/model")
    assert model.status_code == 200 and len(model.content) > 1_000_000
    assert "attempt 1" in client.get(f"/jobs/{job_id}/logs").text
    return job


def running_job_cancels_within_seconds(client: httpx.Client, data_dir: Path) -> None:
    spec = {**SMALL_JOB, "epochs": 200}
    job_id = client.post("/jobs", json=spec).json()["id"]
    wait_for(client, job_id, lambda j: (j["current_epoch"] or 0) >= 1, timeout=240)
    job_dir = data_dir / "jobs" / str(job_id)
    assert trainer_pids(job_dir), "the trainer should be running"
    started = time.monotonic()
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    job = wait_for(client, job_id, lambda j: j["status"] in TERMINAL, timeout=30)
    assert job["status"] == "cancelled" and job["failure_reason"] == "cancelled"
    assert time.monotonic() - started < 15
    assert trainer_pids(job_dir) == []
    assert job["current_epoch"] < 200


def cli_session(env: dict[str, str], workdir: Path) -> None:
    """The `trainyard` client commands against the live service, as a person uses them."""

    def trainyard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env={**env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=300,
            cwd=workdir,
        )

    submitted = trainyard(
        "submit", "--dataset", "synthetic", "--model", "mlp", "--epochs", "2", "--gpus", "0",
        "--wait",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "succeeded" in submitted.stdout
    job_id = submitted.stdout.split()[1]
    listing = trainyard("status")
    assert listing.returncode == 0 and "succeeded" in listing.stdout and "2/2" in listing.stdout
    plot = trainyard("plot", job_id, "--output", "p.png")
    assert plot.returncode == 0
    assert (workdir / "p.png").read_bytes().startswith(b"\x89PNG")
    gpus = trainyard("gpus")
    assert gpus.returncode == 0 and socket.gethostname() in gpus.stdout, gpus.stdout
    bad = trainyard("submit", "--dataset", "synthetic", "--epochs", "0")
    assert bad.returncode == 1
    assert "epochs: Input should be greater than or equal to 1" in bad.stdout


def uploaded_dataset_trains(client: httpx.Client) -> None:
    """A lab's own data: upload an .npz, then train a job on it by id."""
    rng = np.random.default_rng(3)
    labels = np.arange(96) % 4
    # Learnable: each class is a brighter quadrant.
    images = rng.integers(0, 60, (96, 16, 16, 1), dtype=np.uint8)
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[index, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] += 150
    buffer = io.BytesIO()
    np.savez(
        buffer, x_train=images[:64], y_train=labels[:64], x_test=images[64:], y_test=labels[64:]
    )
    upload = client.post("/datasets", files={"file": ("quadrants.npz", buffer.getvalue())})
    assert upload.status_code == 201, upload.text
    dataset = upload.json()
    assert (dataset["classes"], dataset["image_shape"]) == (4, [16, 16, 1])
    spec = {"dataset": dataset["id"], "epochs": 2, "gpus": 0, "batch_size": 16, "model": "mlp"}
    job_id = client.post("/jobs", json=spec).json()["id"]  # mixed_precision: its default, auto
    job = wait_for(client, job_id, lambda j: j["status"] in TERMINAL, timeout=240)
    assert job["status"] == "succeeded", job
    metrics = client.get(f"/jobs/{job_id}/metrics").json()
    assert [m["epoch"] for m in metrics] == [1, 2]


def readme_first_job() -> dict[str, object]:
    """The spec of the README's first `curl ... -X POST .../jobs -d '{...}'`, as printed."""
    match = re.search(r"-X POST localhost:8000/jobs .*?\n?.*?-d '(\{.*?\})'", README.read_text())
    assert match is not None, "the README has no curl submission"
    spec: dict[str, object] = json.loads(match.group(1))
    return spec


def readme_first_job_learns(client: httpx.Client) -> None:
    """A new user's first job, exactly as the README shows it (a seed fixed for
    repeatability), succeeds with everything a job offers and learns visibly: the default
    bn_momentum "auto" resolves to 0.9 on digits."""
    spec = readme_first_job()
    assert spec["dataset"] == "digits" and "bn_momentum" not in spec, spec
    job = job_succeeds_with_every_epoch_once(client, {**spec, "seed": 1})
    assert job["resolved"]["bn_momentum"] == 0.9
    assert job["last_metrics"]["val_accuracy"] >= 0.5, job["last_metrics"]
