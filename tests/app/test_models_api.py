"""GET /models (the zoo) and the spec's model, optimizer and regularisation fields at the API."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.zoo import ZOO
from app.main import app
from tests.conftest import bearer


def test_the_zoo_is_listed_with_parameter_counts(tokens: dict[str, str]) -> None:
    client = TestClient(app)
    assert client.get("/models").status_code == 401
    listed = client.get("/models", headers=bearer(tokens["bob"])).json()
    assert [m["name"] for m in listed] == [
        "minigooglenet",
        "resnet20",
        "resnet56",
        "vgg",
        "mlp",
    ]
    assert {m["name"]: m["params"] for m in listed} == {n: z.params for n, z in ZOO.items()}
    assert all("32x32" in m["input"] and m["description"] for m in listed)


def test_a_job_names_a_zoo_model_and_its_optimizer(tokens: dict[str, str]) -> None:
    client = TestClient(app, headers=bearer(tokens["alice"]))
    spec = {
        "model": "resnet20",
        "optimizer": "adamw",
        "weight_decay": 0.0005,
        "label_smoothing": 0.1,
        "augment": "pad_crop",
        "gpus": 0,
    }
    job = client.post("/jobs", json=spec).json()
    assert {key: job["spec"][key] for key in spec} == spec
    old_style = client.post("/jobs", json={"augment": False, "gpus": 0}).json()
    assert old_style["spec"]["augment"] == "none"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "resnet18"),
        ("optimizer", "rmsprop"),
        ("weight_decay", -0.1),
        ("label_smoothing", 1.0),
        ("augment", "cutout"),
    ],
)
def test_a_bad_choice_is_a_422_naming_the_field(
    tokens: dict[str, str], field: str, value: object
) -> None:
    client = TestClient(app, headers=bearer(tokens["alice"]))
    response = client.post("/jobs", json={field: value, "gpus": 0})
    assert response.status_code == 422
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]
    assert client.get("/jobs").json()["total"] == 0
