"""/jobs: submit, list, read, follow (metrics, plot, log), download the model, cancel, delete."""

import csv
import hashlib
import io
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Response, status
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse

from app.api.auth import UNAUTHORIZED, CurrentUser, current_user, require_owner_or_admin
from app.api.datasets import field_error
from app.api.deps import DecimalDigits, SessionDep
from app.api.job_view import job_view, job_views
from app.api.schemas import EpochOut, JobOut, JobPage
from app.core import jobs as job_queries
from app.core import lifecycle, retention
from app.core.architectures import get_architecture
from app.core.artifacts import artifact_store, mean_image_key, model_key
from app.core.config import get_settings
from app.core.datasets import get_dataset
from app.core.db import get_session_factory
from app.core.hosts import too_few_live_gpus
from app.core.logs import stored_log, stored_tail, tail_lines
from app.core.models import EPOCH_METRICS, Dataset, Epoch, Job, JobStatus, User, utcnow
from app.core.plots import chart_title, history_png
from app.core.spec import MAX_ID, JobSpec

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="A job's id."), DecimalDigits]

router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    dependencies=[Depends(current_user)],
    responses=UNAUTHORIZED,
)

FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"description": "Only the job's owner or an admin may do this."}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No job with this id."}}


def job_or_404(session: SessionDep, job_id: int) -> Job:
    job = job_queries.get_job(session, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={
        403: {"description": "priority above 0 without being an admin."},
        429: {
            "description": "Over the per-user limit of active jobs or of submissions per "
            "minute (with Retry-After)."
        },
    },
)
def submit_job(
    spec: JobSpec,
    session: SessionDep,
    user: CurrentUser,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=200,
            description="Retry-safe submission: the same key (per user) returns the first job.",
        ),
    ] = None,
) -> JobOut:
    """Submit a training job; it is queued and runs when a worker takes it."""
    if idempotency_key is not None:
        earlier = job_queries.job_for_key(session, user.id, idempotency_key)
        if earlier is not None:
            return _replay(session, earlier, spec, response)
    settings = get_settings()
    if spec.priority > 0 and not user.is_admin:
        raise field_error("priority", "only admins may set priority above 0", 403)
    dataset = get_dataset(session, spec.dataset, user) if isinstance(spec.dataset, int) else None
    if isinstance(spec.dataset, int) and dataset is None:
        raise field_error("dataset", _no_dataset(spec.dataset))
    _check_model(session, spec, user, dataset)
    if spec.gpus and (why := too_few_live_gpus(session, settings, utcnow(), spec.gpus)):
        raise field_error("gpus", f"no host can ever run this job: {why}")
    # A copy of `user` in the session (which holds it weakly: kept here), so that the answer
    # names the owner without a query. A refusal rolls back, which expires the copy only.
    owner = session.merge(user, load=False)
    answer: list[JobOut] = []
    # Committed as queued; a worker's scheduling pass places it and sends it to its host.
    try:
        job = lifecycle.submit(
            session,
            spec,
            owner,
            idempotency_key,
            settings.max_active_jobs_per_user,
            settings.submit_rate_per_minute,
            before_commit=lambda new: answer.append(job_view(session, new)),
        )
    except lifecycle.SubmitRateLimit as rate:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{user.name} is submitting faster than {rate.per_minute} jobs a minute, the "
            f"limit (TRAINYARD_SUBMIT_RATE_PER_MINUTE); retry in {rate.retry_after} s",
            headers={"Retry-After": str(rate.retry_after)},
        ) from rate
    except lifecycle.DatasetGone as gone:
        raise field_error("dataset", _no_dataset(spec.dataset)) from gone
    except lifecycle.ArchitectureGone as gone:
        raise field_error("model", f"model {spec.model} was just deleted") from gone
    except lifecycle.ActiveJobLimit as limit:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{user.name} has {limit.limit} queued, placed or running jobs, the limit "
            "(TRAINYARD_MAX_ACTIVE_JOBS_PER_USER); submit again when one ends",
        ) from limit
    if answer and answer[0].id == job.id:
        return answer[0]
    return _replay(session, job, spec, response)  # a concurrent request with this key won


def _check_model(session: SessionDep, spec: JobSpec, user: User, dataset: Dataset | None) -> None:
    """422 naming `model` or `init` when the job could never train: an uploaded
    architecture the user may not use, or whose input or classes the dataset cannot feed."""
    if not isinstance(spec.model, int):
        if spec.init == "uploaded":
            raise field_error("init", "'uploaded' needs an uploaded architecture as model")
        return
    found = get_architecture(session, spec.model, user)
    if found is None:
        raise field_error(
            "model",
            f"no uploaded model with id {spec.model} that you may use (GET /models lists them)",
        )
    if spec.init == "uploaded" and not found.has_weights:
        raise field_error("init", f"model {found.id} has no weights (a JSON upload)")
    channels, classes = (
        (dataset.image_shape[-1], dataset.classes) if dataset is not None else BUILTIN_SHAPE
    )
    if found.input_shape[-1] != channels or found.classes != classes:
        raise field_error(
            "model",
            f"model {found.id} takes {found.input_shape[-1]} channel(s) and gives "
            f"{found.classes} classes; dataset {spec.dataset} has {channels} and {classes}",
        )


# Every built-in dataset reaches the trainer as 32x32 RGB images of 10 classes.
BUILTIN_SHAPE = (3, 10)


def _no_dataset(dataset: object) -> str:
    return f"no uploaded dataset with id {dataset} that you may use (GET /datasets lists them)"


def _replay(session: SessionDep, job: Job, spec: JobSpec, response: Response) -> JobOut:
    """The answer to a repeated Idempotency-Key: the first job, if the spec is the same."""
    if job.spec != spec.model_dump():
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[
                {
                    "loc": ["header", "idempotency-key"],
                    "msg": f"this key was already used for job {job.id} with a different spec",
                    "type": "value_error",
                }
            ],
        )
    response.headers["Idempotent-Replayed"] = "true"
    return job_view(session, job)


@router.get("", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> JobPage:
    """List jobs, newest first, optionally only those in one status."""
    jobs, total = job_queries.list_jobs(session, status_filter, limit, offset)
    items = job_views(session, jobs)
    return JobPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def get_job(job_id: JobId, session: SessionDep) -> JobOut:
    """One job: status, spec, timestamps, attempt, last epoch and failure reason."""
    return job_view(session, job_or_404(session, job_id))


@router.get(
    "/{job_id}/metrics",
    response_model=list[EpochOut],
    responses={**NOT_FOUND, 200: {"content": {"text/csv": {}}}},
)
def get_metrics(
    job_id: JobId,
    session: SessionDep,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> list[EpochOut] | Response:
    """The job's epoch history, as JSON or (`?format=csv`) CSV."""
    job_or_404(session, job_id)
    epochs = [EpochOut.model_validate(e) for e in job_queries.list_epochs(session, job_id)]
    if format == "json":
        return epochs
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["epoch", *EPOCH_METRICS])
    for e in epochs:
        writer.writerow([e.epoch, *(getattr(e, name) for name in EPOCH_METRICS)])
    return Response(
        buffer.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="job-{job_id}-metrics.csv"'},
    )


@router.get(
    "/{job_id}/plot.png",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {"content": {"image/png": {}}},
        304: {"description": "If-None-Match holds the current ETag: no epoch was added."},
    },
)
def get_plot(
    job_id: JobId,
    session: SessionDep,
    if_none_match: Annotated[
        str | None, Header(max_length=1000, description="An ETag of an earlier answer.")
    ] = None,
) -> Response:
    """The seed's loss/accuracy chart of the epochs recorded so far, as PNG. Its ETag changes
    only when an epoch is recorded (or re-recorded by a later attempt), so a page polling it
    redraws nothing until then."""
    job = job_or_404(session, job_id)
    epochs = job_queries.list_epochs(session, job_id)
    etag = epochs_etag(job_id, epochs)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    title = chart_title(job.spec["model"], job.spec["dataset"])
    return Response(history_png(epochs, title), media_type="image/png", headers=headers)


def epochs_etag(job_id: int, epochs: list[Epoch]) -> str:
    """A strong ETag of a chart: which epochs it draws, and from which records."""
    seen = ";".join(f"{e.epoch}:{e.attempt}:{e.recorded_at.isoformat()}" for e in epochs)
    digest = hashlib.sha256(f"{job_id}|{seen}".encode()).hexdigest()[:32]
    return f'"{digest}"'


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    responses={**NOT_FOUND, **FORBIDDEN},
)
def get_logs(
    job_id: JobId,
    session: SessionDep,
    user: CurrentUser,
    tail: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> Response:
    """The trainer's log (its stderr), whole or its last `tail` lines (owner or admin)."""
    job = job_or_404(session, job_id)
    require_owner_or_admin(job, user, "read the log of")
    if not job.log_lines:  # a job run before logs were stored in the database: its file
        path = get_settings().job_dir(job_id) / "train.log"
        if tail is not None:
            return PlainTextResponse(tail_lines(path, tail))
        return PlainTextResponse(path.read_text(errors="replace") if path.exists() else "")
    if tail is not None:
        return PlainTextResponse(stored_tail(session, job, tail))
    return StreamingResponse(_whole_log(job), media_type="text/plain; charset=utf-8")


def _whole_log(job: Job) -> Iterator[str]:
    # A session of its own: the request's may be closed before the last chunk is sent.
    with get_session_factory()() as session:
        yield from stored_log(session, job)


DOWNLOAD: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}},
    **NOT_FOUND,
    **FORBIDDEN,
    409: {"description": "The job has not succeeded (nothing to download yet)."},
}


@router.get("/{job_id}/model", response_class=FileResponse, responses=DOWNLOAD)
def get_model(job_id: JobId, session: SessionDep, user: CurrentUser) -> Response:
    """Download the trained model (`.keras`) of a succeeded job (owner or admin)."""
    return _download(session, user, job_id, "model", model_key, "model.keras", ".keras")


@router.get("/{job_id}/mean_image.npy", response_class=FileResponse, responses=DOWNLOAD)
def get_mean_image(job_id: JobId, session: SessionDep, user: CurrentUser) -> Response:
    """The per-pixel mean image (`.npy`, float32 H x W x C) of a succeeded job's training
    data: the model expects it subtracted from its input (owner or admin)."""
    return _download(
        session, user, job_id, "mean image", mean_image_key, "mean_image.npy", "-mean_image.npy"
    )


def _download(
    session: SessionDep,
    user: User,
    job_id: int,
    what: str,
    key: Callable[[int, int], str],
    local_name: str,
    suffix: str,
) -> Response:
    job = job_or_404(session, job_id)
    require_owner_or_admin(job, user, f"download the {what} of")
    filename = f"job-{job_id}{suffix}"
    if job.status == JobStatus.succeeded:
        store = artifact_store(get_settings())
        stored = store.info(key(job_id, job.attempt))
        if stored is not None:
            return StreamingResponse(
                store.chunks(stored.key),
                media_type="application/octet-stream",
                headers={
                    "Content-Disposition": f'attachment; filename="{filename}"',
                    "Content-Length": str(stored.size),
                },
            )
        local = get_settings().job_dir(job_id) / local_name  # a job from before the store
        if local.exists():
            return FileResponse(local, filename=filename)
    raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} has no {what}: {job.status}")


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={**NOT_FOUND, **FORBIDDEN, 409: {"description": "The job had already ended."}},
)
def cancel_job(job_id: JobId, session: SessionDep, user: CurrentUser) -> JobOut:
    """Cancel a job: a queued one at once, a running one within seconds (owner or admin)."""
    job = job_or_404(session, job_id)
    require_owner_or_admin(job, user, "cancel")
    if not lifecycle.cancel(session, job):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already {job.status}")
    return job_view(session, job)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        **NOT_FOUND,
        **FORBIDDEN,
        409: {"description": "The job is queued, placed or running: cancel it first."},
    },
)
def delete_job(job_id: JobId, session: SessionDep, user: CurrentUser) -> Response:
    """Delete an ended job with its epochs, log and model (owner or admin)."""
    job = job_or_404(session, job_id)
    require_owner_or_admin(job, user, "delete")
    if not retention.delete_job(session, get_settings(), job_id):
        job = job_or_404(session, job_id)  # 404 if a concurrent request deleted it first
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job {job_id} is {job.status}: cancel it before deleting"
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
