"""Schemathesis against the real app, on SQLite and on PostgreSQL: every operation of the
OpenAPI document, called as a user with a real bearer token, on the cases Schemathesis makes
(the coverage phase's boundary values, missing parts and undocumented methods, then fuzzed
valid and invalid input), answers no 5xx and only what the document says: a documented status
code and content type, a body of the documented schema, 405 with an `Allow` that lists the
path's methods, 401 without the token, a 4xx to invalid input and no refusal of valid input.

Bounded for CI: a few fuzzed examples per operation after the coverage phase's own, the same
ones on every run (derandomized), and no Hypothesis database.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from app.core import lifecycle
from app.core.config import get_settings
from app.core.db import get_session_factory
from app.core.models import Architecture, JobStatus, User
from app.core.users import hash_token, new_token
from app.main import app
from tests.app.test_datasets_api import good_arrays, npz_bytes
from tests.conftest import bearer, place_and_claim, register_test_host

# Hypothesis keeps caches (constants it found in the code, Unicode tables) in .hypothesis/ of
# the working directory: here, outside the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "trainyard-hypothesis")

# Fuzzed examples per operation (TRAINYARD_TEST_SCHEMATHESIS_EXAMPLES=200 for a longer look).
MAX_EXAMPLES = int(os.environ.get("TRAINYARD_TEST_SCHEMATHESIS_EXAMPLES", "10"))

# Loaded from the app object, not over HTTP: nothing here reads settings or a database.
schema = schemathesis.openapi.from_dict(
    app.openapi(), config=SchemathesisConfig.from_dict({"seed": 20260101})
)
schema.app = app  # requests go to the app in-process (ASGI)
# The event streams answer until their job ends (/events: forever), which a case cannot wait
# for; tests/app/test_events.py tests them, their errors included, against a real server.
schema = schema.exclude(path_regex=r"/events$")

# Alice's token, the same in every test of this process: Schemathesis builds the coverage
# phase's cases, authenticated, when it collects the tests, before any database exists.
ALICE_TOKEN = new_token()


@schema.auth(refresh_interval=None)
class AliceToken:
    """Alice's bearer token on every request, except those that leave the Authorization
    header out on purpose (Schemathesis then expects the 401)."""

    def get(self, case: Case, context: Any) -> str:
        return ALICE_TOKEN

    def set(self, case: Case, data: str, context: Any) -> None:
        case.headers["Authorization"] = f"Bearer {data}"


CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def seed_objects(data_dir: Path) -> None:
    """What the {job_id}, {dataset_id} and {architecture_id} routes find at id 1, each id's
    lower bound (which the coverage phase always tries): dataset 1 is Alice's; job 1 is hers
    and succeeded, with its model and log; job 2 is queued on dataset 1; architecture 1 is
    hers. One host has 64 GPUs, the most a spec may ask for, so no schema-valid `gpus` is
    refused for want of a host.

    The upload and the submissions are explicit Schemathesis cases, their answers checked
    against the document too: no generated file is an .npz that holds a data set."""
    register_test_host(gpus=64)
    # The answer's conformance only (the other checks send more requests: not per test).
    answer = {"headers": bearer(ALICE_TOKEN), "checks": CONFORMANCE}
    upload = schema["/datasets"]["POST"].Case(
        body={"file": npz_bytes(good_arrays()), "name": "mine.npz"},
        media_type="multipart/form-data",
    )
    response = upload.call_and_validate(**answer)
    assert (response.status_code, response.json()["id"]) == (201, 1), response.text
    submit = schema["/jobs"]["POST"]
    response = submit.Case(body={"dataset": "digits", "epochs": 1}).call_and_validate(**answer)
    assert (response.status_code, response.json()["id"]) == (201, 1), response.text
    attempt = place_and_claim(1)
    with get_session_factory()() as session:
        assert lifecycle.finish(session, 1, attempt, JobStatus.succeeded)
    folder = data_dir / "jobs" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.keras").write_bytes(b"PK\x03\x04 a model's bytes")
    (folder / "train.log").write_text("epoch 1/1\n")
    response = submit.Case(body={"dataset": 1, "gpus": 0}).call_and_validate(**answer)
    assert (response.status_code, response.json()["id"]) == (201, 2), response.text
    # Architecture 1, as POST /models records a checked upload (building one for real takes
    # a TensorFlow process: tests/app/test_architectures.py does).
    with get_session_factory()() as session:
        session.add(
            Architecture(
                name="cnn.keras",
                owner_id=session.query(User.id).filter_by(name="alice").scalar(),
                kind="keras",
                output="softmax",
                input_shape=[32, 32, 3],
                classes=10,
                params=5418,
                has_weights=True,
                size_bytes=1000,
                sha256="0" * 64,
            )
        )
        session.commit()


@pytest.fixture
def alice(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alice, a plain user holding ALICE_TOKEN, on a database with objects to find. She may
    have any number of active jobs: each valid submission is stored, not the 101st refused."""
    monkeypatch.setenv("TRAINYARD_MAX_ACTIVE_JOBS_PER_USER", "0")
    get_settings.cache_clear()
    with get_session_factory()() as session:
        session.add(User(name="alice", is_admin=False, token_hash=hash_token(ALICE_TOKEN)))
        session.commit()
    seed_objects(db)


def with_stored_state(case: Case) -> None:
    """A schema-valid job submission made valid for the stored state too, which no schema
    describes: its uploaded dataset is one that exists, and its Idempotency-Key was not used
    before with another spec. (New containers, not edits: the coverage phase's cases share
    theirs, and each case runs once per backend.)"""
    if case.operation.label != "POST /jobs" or not isinstance(case.body, dict):
        return
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return
    if type(case.body.get("dataset")) in (int, float):  # an id, maybe written 2.0
        case.body = {**case.body, "dataset": 1}
    if type(case.body.get("model")) in (int, float):  # architecture 1, on data it takes
        case.body = {**case.body, "model": 1, "dataset": "digits"}
    if key := case.headers.get("idempotency-key"):
        spec = json.dumps(case.body, sort_keys=True)
        headers = case.headers.copy()
        headers["idempotency-key"] = hashlib.sha256(f"{key}{spec}".encode()).hexdigest()
        case.headers = headers


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    database=None,  # no .hypothesis/ directory in the repository
    derandomize=True,  # the same cases on every run and every machine
    deadline=None,  # a shared 2-core CI machine is slow at times; the count bounds the time
    # One database per operation, shared by its examples (they add to it, as clients do);
    # a busy machine is slow.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=False,
)
def test_api_answers_as_its_openapi_document_says(case: Case, alice: None) -> None:
    with_stored_state(case)
    if case.operation.label not in ("POST /datasets", "POST /models"):
        case.call_and_validate()
        return
    # Which bytes make a usable .npz or Keras model no schema says: a schema-valid upload may
    # be refused, with the 422 that names the file, and only that (seed_objects' upload must
    # succeed).
    positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    if positive and response.status_code != 201:
        assert response.status_code == 422, response.text
        assert [error["loc"] for error in response.json()["detail"]] == [["body", "file"]]
