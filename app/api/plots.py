"""/plots: charts across jobs, for comparing runs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status

from app.api.auth import UNAUTHORIZED, current_user
from app.api.deps import SessionDep
from app.core import jobs as job_queries
from app.core.plots import compare_png
from app.core.spec import MAX_ID

MAX_COMPARED = 20

router = APIRouter(
    prefix="/plots", tags=["plots"], dependencies=[Depends(current_user)], responses=UNAUTHORIZED
)

Metric = Literal["loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


@router.get(
    "/compare.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        404: {"description": "One of the jobs does not exist; the message names it."},
    },
)
def compare(
    session: SessionDep,
    jobs: Annotated[
        str,
        Query(
            pattern=r"^[1-9][0-9]{0,9}(,[1-9][0-9]{0,9}){0,19}$",
            description=f"Up to {MAX_COMPARED} job ids, comma-separated: 1,2,3.",
        ),
    ],
    metric: Annotated[Metric, Query(description="The epoch metric to draw.")] = "val_accuracy",
) -> Response:
    """One line per job: `metric` per epoch, to compare runs (as PNG)."""
    ids = list(dict.fromkeys(int(part) for part in jobs.split(",")))
    runs = []
    for job_id in ids:
        # Beyond the id column's range no job can exist (and the database must not be asked).
        job = job_queries.get_job(session, job_id) if job_id <= MAX_ID else None
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
        label = f"job {job_id}" + (f" ({job.name})" if job.name else "")
        runs.append((label, job_queries.list_epochs(session, job_id)))
    return Response(compare_png(runs, metric), media_type="image/png")
