"""POST /models: uploaded Keras architectures are read as data, anything that would run
code is refused naming its layer (and never runs), the rest is built in a limited child
process and described; jobs name them by id; owners, visibility and deletion as datasets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import app
from tests.conftest import bearer
from tests.keras_files import make_model_files

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, int]]:
    folder = tmp_path_factory.mktemp("models")
    marker, info = make_model_files(folder)
    return folder, marker, info


def upload(client: TestClient, path: Path, **form: str):  # type: ignore[no-untyped-def]
    return client.post("/models", files={"file": (path.name, path.read_bytes())}, data=form)


def test_a_functional_cnn_is_described_and_private_to_its_owner(
    tokens: dict[str, str], files: tuple[Path, Path, dict[str, int]]
) -> None:
    folder, _, info = files
    alice = TestClient(app, headers=bearer(tokens["alice"]))
    bob = TestClient(app, headers=bearer(tokens["bob"]))
    response = upload(alice, folder / "cnn.keras", name="lab cnn")
    assert response.status_code == 201, response.text
    model = response.json()
    assert (model["name"], model["params"], model["classes"]) == ("lab cnn", info["cnn_params"], 10)
    assert (model["has_weights"], model["output"], model["owner"]) == (True, "softmax", "alice")
    assert model["input"] == "32x32 images with 3 channel(s)"
    assert model["id"] in [m["id"] for m in alice.get("/models").json()]
    assert model["id"] not in [m["id"] for m in bob.get("/models").json()]
    assert bob.get(f"/models/{model['id']}").status_code == 404
    # Compiled with Keras' functions as loss and metric: its compile settings are dropped.
    assert upload(alice, folder / "compiled.keras").status_code == 201
    shared = upload(alice, folder / "cnn.json", public="true").json()
    assert shared["has_weights"] is False
    assert bob.get(f"/models/{shared['id']}").json()["owner"] == "alice"


def test_a_planted_lambda_is_refused_naming_it_and_never_runs(
    tokens: dict[str, str], files: tuple[Path, Path, dict[str, int]]
) -> None:
    folder, marker, _ = files
    alice = TestClient(app, headers=bearer(tokens["alice"]))
    for name, layer in (
        ("lambda.keras", "'planted' is a Lambda"),
        ("function.json", "'shell' is a Lambda"),
        ("custom.keras", "'doubler' uses the custom object lab>Doubler"),
        ("operation.json", "'switch' uses Switch from keras.src.ops.core"),
    ):
        response = upload(alice, folder / name)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "file"] and layer in error["msg"], error
    assert not marker.exists()  # the Lambda's code never ran
    assert not list(folder.glob("switch-ran*"))  # nor the function the operation names
    assert [m["id"] for m in alice.get("/models").json() if m["id"]] == []


@pytest.mark.parametrize(
    ("name", "form", "reason"),
    [
        ("logits.keras", {}, "the last layer is not a softmax"),
        ("small.keras", {}, "shaped [None, 28, 28, 3]"),
        ("cnn.keras", {"output": "logits"}, "output=logits, but the last layer is a softmax"),
    ],
)
def test_a_model_datasets_cannot_feed_is_refused_saying_why(
    tokens: dict[str, str],
    files: tuple[Path, Path, dict[str, int]],
    name: str,
    form: dict[str, str],
    reason: str,
) -> None:
    folder, _, _ = files
    response = upload(TestClient(app, headers=bearer(tokens["alice"])), folder / name, **form)
    assert response.status_code == 422 and reason in response.text, response.text


def test_what_is_not_a_model_is_a_422(tokens: dict[str, str], tmp_path: Path) -> None:
    alice = TestClient(app, headers=bearer(tokens["alice"]))
    for name, content in (
        ("empty.keras", b""),
        ("noise.keras", bytes(range(256)) * 4),
        ("list.json", b"[1, 2, 3]"),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        response = upload(alice, path)
        assert response.status_code == 422, (name, response.text)
        assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_jobs_name_an_upload_by_id_and_it_stays_while_they_are_active(
    tokens: dict[str, str], files: tuple[Path, Path, dict[str, int]]
) -> None:
    folder, _, _ = files
    alice = TestClient(app, headers=bearer(tokens["alice"]))
    bob = TestClient(app, headers=bearer(tokens["bob"]))
    model = upload(alice, folder / "cnn.keras").json()["id"]
    weightless = upload(alice, folder / "cnn.json").json()["id"]
    job = alice.post("/jobs", json={"model": model, "dataset": "digits", "gpus": 0})
    assert job.status_code == 201, job.text
    assert (
        alice.post("/jobs", json={"model": model, "init": "uploaded", "gpus": 0}).status_code == 201
    )

    def refused(client: TestClient, spec: dict[str, object]) -> tuple[str, str]:
        response = client.post("/jobs", json={"gpus": 0, **spec})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        return error["loc"][-1], error["msg"]

    assert refused(bob, {"model": model})[0] == "model"  # alice's, private
    assert refused(alice, {"model": weightless, "init": "uploaded"})[0] == "init"
    assert refused(alice, {"init": "uploaded"})[0] == "init"  # a zoo model has no upload
    gray = io.BytesIO()
    labels = np.arange(40) % 10
    images = np.zeros((40, 32, 32, 1), np.uint8)
    np.savez(gray, x_train=images, y_train=labels, x_test=images[:10], y_test=labels[:10])
    dataset = alice.post("/datasets", files={"file": ("gray.npz", gray.getvalue())}).json()["id"]
    field, message = refused(alice, {"model": model, "dataset": dataset})
    assert field == "model" and "takes 3 channel(s)" in message and "has 1 and 10" in message

    in_use = alice.delete(f"/models/{model}")
    assert in_use.status_code == 409 and str(job.json()["id"]) in in_use.text
    assert bob.delete(f"/models/{weightless}").status_code == 404
    for active in alice.get("/jobs").json()["items"]:
        alice.post(f"/jobs/{active['id']}/cancel")
    assert alice.delete(f"/models/{model}").status_code == 204
    assert alice.get(f"/models/{model}").status_code == 404


def test_the_check_is_bounded_in_parameters_and_memory(
    tokens: dict[str, str],
    files: tuple[Path, Path, dict[str, int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from app.core.config import get_settings

    folder, _, info = files
    alice = TestClient(app, headers=bearer(tokens["alice"]))
    monkeypatch.setenv("TRAINYARD_MAX_MODEL_PARAMS", "1000")
    get_settings.cache_clear()
    over = upload(alice, folder / "cnn.keras")
    assert over.status_code == 422
    assert f"{info['cnn_params']} parameters, over the limit of 1000" in over.text
    # 32 x 25 million weights in the last layer: 3.2 GB, which this machine has, but not the
    # check's 3 GiB of address space (TensorFlow takes half of it): the child runs out of
    # memory, the API answers 422 and goes on.
    monkeypatch.setenv("TRAINYARD_MAX_MODEL_PARAMS", str(10**12))
    monkeypatch.setenv("TRAINYARD_MODEL_CHECK_MEMORY_BYTES", str(3 * 1024**3))
    get_settings.cache_clear()
    config = json.loads((folder / "cnn.json").read_text())
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Dense":
            layer["config"]["units"] = 25 * 10**6
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps(config))
    refused = upload(alice, huge)
    assert refused.status_code == 422, refused.text
    assert "out of memory" in refused.text
    assert alice.get("/healthz").status_code == 200
