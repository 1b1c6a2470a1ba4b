"""One owner for each state machine: only app/core/lifecycle.py changes a job's status or
writes a GPU lease row. This reads the source, so a new writer elsewhere fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWNER = ROOT / "app" / "core" / "lifecycle.py"


def writes_of_job_or_lease_state(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every statement that sets a status or lease column, or builds a
    lease row: `x.status = ...`, `.values(status=...)`, `Job(status=...)`, a new row's
    `new_row(..., status=...)`, `GpuLease(...)`, `released_at=...`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in ("status", "released_at"):
                    found.append((node.lineno, f"assigns .{target.attr}"))
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            name = name or (node.func.id if isinstance(node.func, ast.Name) else "")
            if name == "GpuLease":
                found.append((node.lineno, "creates a GpuLease row"))
            for keyword in node.keywords:
                if keyword.arg == "released_at" or (
                    keyword.arg == "status" and name in ("values", "Job", "update", "new_row")
                ):
                    found.append((node.lineno, f"{name}({keyword.arg}=...)"))
    return found


def test_only_lifecycle_writes_job_status_and_leases() -> None:
    offenders = []
    for path in sorted([*(ROOT / "app").rglob("*.py"), *(ROOT / "worker").rglob("*.py")]):
        if path == OWNER:
            continue
        for line, what in writes_of_job_or_lease_state(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert offenders == [], "state written outside app/core/lifecycle.py:\n" + "\n".join(offenders)


def test_the_scan_sees_the_owners_own_writes() -> None:
    # The check is only as good as its patterns: they must find lifecycle's writes.
    kinds = {what for _, what in writes_of_job_or_lease_state(ast.parse(OWNER.read_text()))}
    assert {"values(status=...)", "new_row(status=...)", "creates a GpuLease row"} <= kinds
    assert "values(released_at=...)" in kinds
