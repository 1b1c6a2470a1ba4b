"""The OpenAPI document says what the API does, in words a client or a generator reads: the
bounds of ids in paths, the rule between two spec fields, every status a bad body can get,
the methods a path allows, what an integer is. (tests/app/test_schemathesis.py checks the
answers against the document; these pin what it found.)"""

from __future__ import annotations

import itertools
from typing import Any

import jsonschema_rs
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.core.spec import JobSpec
from app.main import app
from tests.conftest import Configure, bearer


def document() -> dict[str, Any]:
    return app.openapi()


def schemas_in(node: Any) -> list[dict[str, Any]]:
    """Every JSON Schema object in `node` that declares a type."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            found.append(node)
        for value in node.values():
            found.extend(schemas_in(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(schemas_in(value))
    return found


def test_bounds_are_written_in_json_schema_words() -> None:
    # Path(...) placed after a validator in Annotated reached the document as pydantic's
    # "ge"/"le", which JSON Schema does not know: an id of 0 or 2^31 looked valid.
    for schema in schemas_in(document()):
        assert not {"ge", "gt", "le", "lt"} & set(schema), schema
    for path, name in (("/jobs/{job_id}", "job_id"), ("/datasets/{dataset_id}", "dataset_id")):
        (parameter,) = document()["paths"][path]["get"]["parameters"]
        assert parameter["name"] == name
        assert (parameter["schema"]["minimum"], parameter["schema"]["maximum"]) == (1, 2**31 - 1)


def test_the_document_knows_cpu_replicas_needs_gpus_0() -> None:
    job_spec = document()["components"]["schemas"]["JobSpec"]
    assert "gpus" in job_spec["properties"]["cpu_replicas"]["description"]
    validator = jsonschema_rs.validator_for(job_spec)
    # Every combination, with each field also left out: the document and the API agree.
    for gpus, replicas in itertools.product([None, 0, 1, 2, 64], [None, 0, 1, 16]):
        spec = {"gpus": gpus, "cpu_replicas": replicas}
        spec = {name: value for name, value in spec.items() if value is not None}
        try:
            JobSpec.model_validate(spec)
            accepted = True
        except ValidationError:
            accepted = False
        assert validator.is_valid(spec) == accepted, spec
    assert not validator.is_valid({"cpu_replicas": 2})  # gpus defaults to 1
    assert validator.is_valid({"cpu_replicas": 2, "gpus": 0})


def test_unsupported_methods_get_405_allowing_the_documented_ones(configure: Configure) -> None:
    configure()
    client = TestClient(app)
    for path, operations in document()["paths"].items():
        documented = {method.upper() for method in operations}
        url = path.format(job_id=1, dataset_id=1, architecture_id=1)
        for method in sorted({"OPTIONS", "GET", "POST", "PUT", "PATCH", "DELETE"} - documented):
            response = client.request(method, url)
            assert response.status_code == 405, (method, url)
            # All of the path's methods, not only those of the route tried first (OPTIONS
            # /jobs said `Allow: POST`, leaving GET out).
            assert set(response.headers["allow"].split(", ")) == documented, (method, url)


MULTIPART = "multipart/form-data; boundary=b"
UNPARSABLE = [
    ("multipart/form-data", b"--b\r\n"),  # no boundary
    (MULTIPART, b"not multipart at all"),
    (MULTIPART, b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n"),  # no name
    (
        MULTIPART,
        b"".join(
            b'--b\r\nContent-Disposition: form-data; name="f%d"; filename="f"\r\n\r\nx\r\n' % i
            for i in range(1001)
        )
        + b"--b--\r\n",
    ),
    ("application/x-www-form-urlencoded", "&".join(f"f{i}=x" for i in range(1001)).encode()),
]


def test_a_body_that_cannot_be_parsed_is_a_documented_422(tokens: dict[str, str]) -> None:
    # Starlette's form parsers answered these 400, a status the document never mentions.
    client = TestClient(app, headers=bearer(tokens["alice"]))
    upload = document()["paths"]["/datasets"]["post"]
    assert "400" not in upload["responses"]
    validator = jsonschema_rs.validator_for(
        {**upload["responses"]["422"]["content"]["application/json"]["schema"], **document()}
    )
    for content_type, body in UNPARSABLE:
        response = client.post("/datasets", content=body, headers={"content-type": content_type})
        assert response.status_code == 422, (content_type, body[:40], response.text)
        validator.validate(response.json())
        (error,) = response.json()["detail"]
        assert (error["type"], error["loc"]) == ("body_invalid", ["body"]), error
    assert client.get("/datasets").json() == []


def test_an_integer_is_what_json_schema_calls_one(tokens: dict[str, str]) -> None:
    # To JSON Schema, and so to the document's "integer", 3.0 is the integer 3.
    client = TestClient(app, headers=bearer(tokens["alice"]))
    spec = {"dataset": "digits", "gpus": 0.0, "cpu_replicas": 2.0, "epochs": 3.0}
    response = client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    stored = response.json()["spec"]
    assert [stored[name] for name in ("gpus", "cpu_replicas", "epochs")] == [0, 2, 3]
    assert all(type(stored[name]) is int for name in ("gpus", "cpu_replicas", "epochs"))
    for bad in ({"epochs": 2.5}, {"epochs": "3"}, {"gpus": True}):
        response = client.post("/jobs", json=bad)
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"] == ["body", next(iter(bad))]


def test_the_model_download_is_documented_as_bytes() -> None:
    answer = document()["paths"]["/jobs/{job_id}/model"]["get"]["responses"]["200"]
    assert list(answer["content"]) == ["application/octet-stream"]
