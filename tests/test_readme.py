"""The README's job-spec table is the spec's: every field, default and bound."""

from __future__ import annotations

from pathlib import Path

from app.core.spec import JobSpec
from app.core.spec_doc import allowed, markdown_table, readme_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_spec_table_is_generated_from_the_spec() -> None:
    documented = readme_table(README.read_text())
    assert documented is not None, "README.md lost its spec-table markers"
    assert documented == markdown_table(), (
        "README.md's spec table is stale: run `.venv/bin/python -m app.core.spec_doc README.md`"
    )


def test_the_table_states_each_fields_bounds() -> None:
    fields = JobSpec.model_fields
    assert allowed(fields["epochs"]) == "1..1000"
    assert allowed(fields["lr"]) == "number > 0, ≤ 10"
    assert allowed(fields["bn_momentum"]) == '`"auto"` or number > 0, < 1'
    # The API never offers a local file path, so the table does not either.
    assert allowed(fields["dataset"]) == '`"cifar10"`, `"digits"`, `"synthetic"` or 1..2^31-1'
    rows = [line for line in markdown_table().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(fields)
