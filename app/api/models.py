"""/models: the architectures a job may train. The zoo (by name) and uploaded Keras
architectures (by id: `POST /models`, checked without running any of the file's code,
visible to their owner and admins, or to everyone when uploaded with `public=true`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, Response, UploadFile
from fastapi import status as http
from pydantic import BaseModel, Field

from app.api.auth import UNAUTHORIZED, CurrentUser, current_user, require_owner_or_admin
from app.api.datasets import field_error
from app.api.deps import DecimalDigits, SessionDep
from app.api.errors import VALIDATION_ERRORS, clip
from app.core import architectures as arch
from app.core.config import get_settings
from app.core.models import Architecture
from app.core.spec import MAX_ID, Label
from app.core.zoo import INPUT, ZOO

ArchitectureId = Annotated[
    int, Path(ge=1, le=MAX_ID, description="An uploaded architecture's id."), DecimalDigits
]

router = APIRouter(
    prefix="/models", tags=["models"], dependencies=[Depends(current_user)], responses=UNAUTHORIZED
)


class ModelOut(BaseModel):
    id: int | None = Field(description="An uploaded architecture's id (none for the zoo's).")
    name: str = Field(description="A zoo model's name, what `model` takes; an upload's label.")
    description: str
    params: int = Field(description="Parameters (the zoo's: for 32x32x3 images, 10 classes).")
    input: str = Field(description="The images it takes.")
    classes: int | None = Field(description="An upload's output classes (a dataset must match).")
    output: Literal["softmax", "logits"]
    has_weights: bool = Field(description='An upload holds weights (`init: "uploaded"`).')
    owner: str | None
    public: bool
    created_at: datetime | None

    @classmethod
    def of(cls, upload: Architecture) -> ModelOut:
        height, width, channels = upload.input_shape
        return cls(
            id=upload.id,
            name=upload.name,
            description=f"uploaded {upload.kind} architecture",
            params=upload.params,
            input=f"{height}x{width} images with {channels} channel(s)",
            classes=upload.classes,
            output=upload.output,  # type: ignore[arg-type]  # checked at upload
            has_weights=upload.has_weights,
            owner=upload.owner.name if upload.owner else None,
            public=upload.public,
            created_at=upload.created_at,
        )


ZOO_OUT = [
    ModelOut(
        id=None,
        name=m.name,
        description=m.description,
        params=m.params,
        input=INPUT,
        classes=None,
        output="softmax",
        has_weights=False,
        owner=None,
        public=True,
        created_at=None,
    )
    for m in ZOO.values()
]


@router.get("", response_model=list[ModelOut])
def list_models(session: SessionDep, user: CurrentUser) -> list[ModelOut]:
    """The zoo, then the uploaded architectures you may use (yours, public ones; an admin:
    all)."""
    return ZOO_OUT + [ModelOut.of(a) for a in arch.list_architectures(session, user)]


@router.post(
    "",
    status_code=http.HTTP_201_CREATED,
    response_model=ModelOut,
    responses={
        413: {"description": "The file is over TRAINYARD_MAX_MODEL_BYTES."},
        422: {
            "description": "Not a Keras model this service can take (code in a layer, a "
            "custom object, a shape datasets cannot feed, no softmax): the message says which.",
            "content": VALIDATION_ERRORS,
        },
        429: {"description": "Too many uploads being checked at once (with Retry-After)."},
    },
)
def upload_model(
    session: SessionDep,
    user: CurrentUser,
    file: Annotated[
        UploadFile, File(description="A .keras file (model.save) or model.to_json()'s JSON.")
    ],
    name: Annotated[Label | None, Form(max_length=200)] = None,
    output: Annotated[
        Literal["softmax", "logits"],
        Form(description="What the last layer gives: probabilities (a softmax) or logits."),
    ] = "softmax",
    public: Annotated[bool, Form(description="Let every user see and train it.")] = False,
) -> ModelOut:
    """Upload a Keras architecture. Its config is read as data and refused if any layer would
    run Python code (Lambda, custom objects); then a child process builds it with Keras' safe
    mode under memory and time limits and records its input, classes and parameters."""
    fallback = clip((file.filename or "").replace("\x00", ""), 200) or "model"
    try:
        stored = arch.store_architecture(
            session, get_settings(), user, name or fallback, file.file, output, public
        )
    except arch.ValidationsBusy as error:
        raise HTTPException(
            http.HTTP_429_TOO_MANY_REQUESTS, str(error), headers={"Retry-After": "5"}
        ) from error
    except arch.TooLarge as error:
        raise field_error("file", str(error), http.HTTP_413_CONTENT_TOO_LARGE) from error
    except arch.ModelFileError as error:
        raise field_error("file", str(error)) from error
    session.refresh(stored, ["owner"])
    return ModelOut.of(stored)


NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No uploaded architecture with this id that you may see."}
}


def _architecture_or_404(
    session: SessionDep, architecture_id: int, user: CurrentUser
) -> Architecture:
    found = arch.get_architecture(session, architecture_id, user)
    if found is None:
        raise HTTPException(http.HTTP_404_NOT_FOUND, f"model {architecture_id} not found")
    return found


@router.get("/{architecture_id}", response_model=ModelOut, responses=NOT_FOUND)
def get_model(architecture_id: ArchitectureId, session: SessionDep, user: CurrentUser) -> ModelOut:
    """One uploaded architecture (yours or public; an admin: any)."""
    return ModelOut.of(_architecture_or_404(session, architecture_id, user))


@router.delete(
    "/{architecture_id}",
    status_code=http.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        **NOT_FOUND,
        403: {"description": "Only the model's owner or an admin may delete it."},
        409: {"description": "Queued, placed or running jobs use it; the message names them."},
    },
)
def delete_model(
    architecture_id: ArchitectureId, session: SessionDep, user: CurrentUser
) -> Response:
    """Delete an uploaded architecture and its file (owner or admin), once no queued,
    placed or running job uses it."""
    found = _architecture_or_404(session, architecture_id, user)
    require_owner_or_admin(found, user, "delete", "model")
    try:
        arch.delete_architecture(session, get_settings(), found)
    except arch.InUse as error:
        raise HTTPException(http.HTTP_409_CONFLICT, str(error)) from error
    return Response(status_code=http.HTTP_204_NO_CONTENT)
