"""new_row: a new row with every column set, so that an object built from it (a submitted
job, inserted by a prebuilt statement) has nothing left to load from the database."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, Table

from app.core.db import new_row, table_of
from app.core.models import Job, JobEvent


def test_every_column_but_the_key_is_given_or_defaulted() -> None:
    row = new_row(table_of(Job), spec={"gpus": 2}, created_at="now", name="n")
    assert set(row) == {column.key for column in table_of(Job).columns} - {"id"}
    assert (row["name"], row["attempt"], row["lost_runs"], row["host"]) == ("n", 0, 0, None)


def test_a_computed_default_must_be_given() -> None:
    with pytest.raises(ValueError, match=r"job_events\.created_at: its default is computed"):
        new_row(table_of(JobEvent), job_id=1, kind="status", data={})


def test_an_unknown_column_is_refused() -> None:
    with pytest.raises(ValueError, match=r"jobs has no column \['stauts'\]"):
        new_row(table_of(Job), created_at="now", stauts="queued")


def test_a_column_only_the_server_defaults_must_be_given() -> None:
    table = Table(
        "t",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("n", Integer, server_default="7"),
    )
    with pytest.raises(ValueError, match=r"t\.n: its default is the server's"):
        new_row(table)
    assert new_row(table, n=1) == {"n": 1}
