"""What one POST /jobs asks of PostgreSQL: the token read on its own (autocommit, one round
trip), then one transaction that checks, writes and reads the answer, then nothing more.

Each extra transaction costs the API and the server a BEGIN and a COMMIT or ROLLBACK, and
each cost both CPU that a box running submissions at full speed does not have: a submission
used to open four transactions and look its owner up again for the answer."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from app.core.db import get_session_factory
from app.core.users import create_user
from app.main import app
from tests.conftest import Configure, bearer, register_test_host

AUTOCOMMIT_BEGIN = "BEGIN (implicit; DBAPI should not BEGIN"


def test_a_submission_is_one_transaction_after_the_token_read(
    configure: Configure, migrated_postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    configure(database_url=migrated_postgres_url, from_template=True)
    register_test_host()
    with get_session_factory()() as session:
        token = create_user(session, "alice")[1]
    client = TestClient(app, headers=bearer(token))
    spec = {"dataset": "digits", "epochs": 3, "gpus": 1}
    assert client.post("/jobs", json=spec).status_code == 201  # warm: first use of each query
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
        response = client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    assert response.json()["owner"] == "alice"
    said = [record.getMessage() for record in caplog.records]
    begins = [line for line in said if line.startswith("BEGIN")]
    assert begins[0].startswith(AUTOCOMMIT_BEGIN)  # the token, read before the body
    assert [line[:16] for line in begins[1:]] == ["BEGIN (implicit)"], said
    assert said.count("COMMIT") == 1 and "ROLLBACK" not in said, said
    assert said[-1] == "COMMIT", said  # the answer was read before it, in the transaction
    owner_lookups = [line for line in said if "FROM users" in line and "users.id =" in line]
    assert owner_lookups == [], said
