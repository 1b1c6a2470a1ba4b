"""/datasets: upload an .npz (validated before it is stored), list, read."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, UploadFile, status

from app.api.auth import UNAUTHORIZED, current_user
from app.api.deps import DecimalDigits, SessionDep
from app.api.errors import clip
from app.api.schemas import DatasetOut
from app.core import datasets as dataset_queries
from app.core.config import get_settings
from app.core.dataset_files import DatasetError
from app.core.spec import MAX_ID, Label

DatasetId = Annotated[int, DecimalDigits, Path(ge=1, le=MAX_ID, description="A dataset's id.")]

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
        413: {"description": "The file is over TRAINYARD_MAX_DATASET_BYTES."},
        422: {"description": "The file is not a usable .npz; the message says why."},
    },
)
def upload_dataset(
    session: SessionDep,
    file: Annotated[UploadFile, File(description=".npz with x_train, y_train, x_test, y_test.")],
    name: Annotated[Label | None, Form(max_length=200)] = None,
) -> DatasetOut:
    """Upload an .npz dataset; it is validated before it is stored."""
    settings = get_settings()
    # The file's own name is the client's to choose too: keep only what can be stored.
    fallback = clip((file.filename or "").replace("\x00", ""), 200) or "dataset.npz"
    try:
        dataset = dataset_queries.store_upload(session, settings, name or fallback, file.file)
    except dataset_queries.ValidationsBusy as error:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, str(error), headers={"Retry-After": "5"}
        ) from error
    except dataset_queries.TooLarge as error:
        raise field_error("file", str(error), status.HTTP_413_CONTENT_TOO_LARGE) from error
    except DatasetError as error:
        raise field_error("file", str(error)) from error
    return DatasetOut.model_validate(dataset)


@router.get("", response_model=list[DatasetOut])
def list_datasets(session: SessionDep) -> list[DatasetOut]:
    """List uploaded datasets, newest first: id, name, shapes, classes, size."""
    return [DatasetOut.model_validate(d) for d in dataset_queries.list_datasets(session)]


@router.get("/{dataset_id}", response_model=DatasetOut, responses={404: {}})
def get_dataset(dataset_id: DatasetId, session: SessionDep) -> DatasetOut:
    """One uploaded dataset."""
    dataset = dataset_queries.get_dataset(session, dataset_id)
    if dataset is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {dataset_id} not found")
    return DatasetOut.model_validate(dataset)
