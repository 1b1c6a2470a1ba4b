"""A zoo model through the whole service: `trainyard up` advertising 2 simulated GPUs, a
ResNet-20 job on digits (2 epochs) with `gpus: 2` trains as two MirroredStrategy replicas, and
its downloaded model and mean image score the test split as the trainer did; an uploaded
functional CNN trains end to end by id, and an upload with a planted Lambda never runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.core.zoo import ZOO
from tests.conftest import BLOCK_TRAINYARD
from tests.e2e.service import (
    TERMINAL,
    add_user,
    api_client,
    free_port,
    processes,
    service_env,
    wait_for,
    wait_for_hosts,
    wait_healthy,
)
from tests.keras_files import make_model_files

pytestmark = pytest.mark.training


@pytest.mark.timeout(1200)  # two real trainings on digits: minutes on an AVX2-only CPU
def test_resnet20_on_two_simulated_gpus(data_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(data_dir, simulated_gpus="2", worker_name="lab1")
    with processes([["up", "--port", str(port)]], env, tmp_path / "logs"):
        wait_healthy(base_url)
        client = api_client(base_url, add_user(env, "alice"))
        wait_for_hosts(client, {"lab1"})
        spec = {
            "model": "resnet20",
            "dataset": "digits",
            "epochs": 2,
            "gpus": 2,
            "lr": 0.05,
            "mixed_precision": "auto",
            "seed": 1,
        }
        job_id = client.post("/jobs", json=spec).json()["id"]
        job = wait_for(client, job_id, lambda j: j["status"] in TERMINAL, timeout=600)
        assert job["status"] == "succeeded", job
        assert job["replicas"] == 2
        assert job["resolved"]["params"] == ZOO["resnet20"].params  # as the README lists it
        metrics = client.get(f"/jobs/{job_id}/metrics").json()
        assert [m["epoch"] for m in metrics] == [1, 2]
        assert all(m["replicas"] == 2 for m in metrics)
        # The model card's files: model and mean image, downloaded as a user would.
        (tmp_path / "model.keras").write_bytes(client.get(f"/jobs/{job_id}/model").content)
        mean = client.get(f"/jobs/{job_id}/mean_image.npy")
        assert mean.status_code == 200
        (tmp_path / "mean.npy").write_bytes(mean.content)
        val_accuracy = job["last_metrics"]["val_accuracy"]

        # A lab's own functional CNN, saved by plain Keras, uploaded and trained by id, from
        # its uploaded weights, on both GPUs; the planted Lambda is refused and never runs.
        marker, info = make_model_files(tmp_path / "files")
        cnn = tmp_path / "files" / "cnn.keras"
        # Each upload is checked by a child that imports TensorFlow: seconds, or tens of
        # seconds beside a training on a loaded CPU (the check itself may take 120 s).
        check = {"timeout": 150}
        uploaded = client.post("/models", files={"file": (cnn.name, cnn.read_bytes())}, **check)
        assert uploaded.status_code == 201, uploaded.text
        planted = tmp_path / "files" / "lambda.keras"
        lambda_file = {"file": (planted.name, planted.read_bytes())}
        refused = client.post("/models", files=lambda_file, **check)
        assert refused.status_code == 422 and "'planted' is a Lambda" in refused.text
        own = {"model": uploaded.json()["id"], "init": "uploaded", "dataset": "digits"}
        own_id = client.post("/jobs", json={**own, "epochs": 1, "gpus": 2}).json()["id"]
        own_job = wait_for(client, own_id, lambda j: j["status"] in TERMINAL, timeout=600)
        assert own_job["status"] == "succeeded", own_job
        assert (own_job["replicas"], own_job["resolved"]["params"]) == (2, info["cnn_params"])
        assert not marker.exists()

    # Plain Keras in a Python that cannot import Trainyard scores the test split as the
    # trainer's last validation did.
    from worker.training.data import load_digits

    digits = load_digits()
    np.save(tmp_path / "x.npy", digits.x_test)
    np.save(tmp_path / "y.npy", digits.y_test)
    script = (
        f"{BLOCK_TRAINYARD}import numpy as np, keras; "
        "m = keras.saving.load_model('model.keras'); "
        "x = np.load('x.npy').astype('float32') - np.load('mean.npy'); "
        "p = np.argmax(m.predict(x, verbose=0), axis=-1); "
        "print(float(np.mean(p == np.load('y.npy'))))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    scored = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert float(scored.stdout.strip().splitlines()[-1]) == pytest.approx(val_accuracy, abs=0.01)
