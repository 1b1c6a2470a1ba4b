"""/datasets: upload an .npz (validated before it is stored), list, read, delete. A dataset is
visible to its owner and admins, or to everyone when uploaded with `public=true`."""

from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Path,
    Response,
    UploadFile,
    status,
)

from app.api.auth import UNAUTHORIZED, CurrentUser, current_user, require_owner_or_admin
from app.api.deps import DecimalDigits, SessionDep
from app.api.errors import VALIDATION_ERRORS, clip
from app.api.schemas import DatasetOut
from app.core import datasets as dataset_queries
from app.core.config import get_settings
from app.core.dataset_files import DatasetError
from app.core.models import Dataset
from app.core.spec import MAX_ID, Label

DatasetId = Annotated[int, Path(ge=1, le=MAX_ID, description="A dataset's id."), DecimalDigits]

router = APIRouter(
    prefix="/datasets",
    tags=["datasets"],
    dependencies=[Depends(current_user)],
    responses=UNAUTHORIZED,
)


def field_error(field: str, message: str, code: int = 422) -> HTTPException:
    """An error shaped like FastAPI's own validation errors: `detail[].loc` names the field."""
    detail: list[dict[str, Any]] = [{"loc": ["body", field], "msg": message, "type": "value_error"}]
    return HTTPException(code, detail=detail)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    responses={
        413: {
            "description": "The file is over TRAINYARD_MAX_DATASET_BYTES, or over what is "
            "left of the uploader's TRAINYARD_MAX_STORAGE_BYTES_PER_USER."
        },
        422: {
            "description": "The file is not a usable .npz, or the form cannot be read; the "
            "message says why.",
            "content": VALIDATION_ERRORS,
        },
    },
)
def upload_dataset(
    session: SessionDep,
    user: CurrentUser,
    file: Annotated[UploadFile, File(description=".npz with x_train, y_train, x_test, y_test.")],
    name: Annotated[Label | None, Form(max_length=200)] = None,
    public: Annotated[
        bool, Form(description="Let every user see and train on it (default: owner and admins).")
    ] = False,
) -> DatasetOut:
    """Upload an .npz dataset; it is validated before it is stored, and counts against the
    uploader's storage quota."""
    settings = get_settings()
    # The file's own name is the client's to choose too: keep only what can be stored.
    fallback = clip((file.filename or "").replace("\x00", ""), 200) or "dataset.npz"
    try:
        dataset = dataset_queries.store_upload(
            session, settings, user, name or fallback, file.file, public
        )
    except dataset_queries.ValidationsBusy as error:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, str(error), headers={"Retry-After": "5"}
        ) from error
    except dataset_queries.TooLarge as error:
        raise field_error("file", str(error), status.HTTP_413_CONTENT_TOO_LARGE) from error
    except DatasetError as error:
        raise field_error("file", str(error)) from error
    return DatasetOut.of(dataset)


@router.get("", response_model=list[DatasetOut])
def list_datasets(session: SessionDep, user: CurrentUser) -> list[DatasetOut]:
    """The datasets you may use, newest first: yours, public ones (an admin: all)."""
    return [DatasetOut.of(d) for d in dataset_queries.list_datasets(session, user)]


NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No dataset with this id that you may see."}
}


def _dataset_or_404(session: SessionDep, dataset_id: int, user: CurrentUser) -> Dataset:
    dataset = dataset_queries.get_dataset(session, dataset_id, user)
    if dataset is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {dataset_id} not found")
    return dataset


@router.get("/{dataset_id}", response_model=DatasetOut, responses=NOT_FOUND)
def get_dataset(dataset_id: DatasetId, session: SessionDep, user: CurrentUser) -> DatasetOut:
    """One uploaded dataset (yours or public; an admin: any)."""
    return DatasetOut.of(_dataset_or_404(session, dataset_id, user))


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        **NOT_FOUND,
        403: {"description": "Only the dataset's owner or an admin may delete it."},
        409: {"description": "Queued, placed or running jobs use it; the message names them."},
    },
)
def delete_dataset(dataset_id: DatasetId, session: SessionDep, user: CurrentUser) -> Response:
    """Delete an uploaded dataset and its file (owner or admin), once no queued, placed or
    running job uses it. Finished jobs that trained on it keep their results."""
    dataset = _dataset_or_404(session, dataset_id, user)
    require_owner_or_admin(dataset, user, "delete", "dataset")
    try:
        dataset_queries.delete_dataset(session, get_settings(), dataset)
    except dataset_queries.InUse as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error
    return Response(status_code=status.HTTP_204_NO_CONTENT)
