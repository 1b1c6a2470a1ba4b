"""GET /models: the architectures a job may name in `model`."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from app.api.auth import UNAUTHORIZED, current_user
from app.core.zoo import INPUT, ZOO

router = APIRouter(
    prefix="/models", tags=["models"], dependencies=[Depends(current_user)], responses=UNAUTHORIZED
)


class ZooModelOut(BaseModel):
    name: str = Field(description="What a job's `model` field takes.")
    description: str
    params: int = Field(description="Parameters for 32x32x3 images and 10 classes.")
    input: str = Field(description="The images it takes.")


@router.get("", response_model=list[ZooModelOut])
def list_models() -> list[ZooModelOut]:
    """The model zoo: every architecture a job may train, with its parameter count."""
    return [
        ZooModelOut(name=m.name, description=m.description, params=m.params, input=INPUT)
        for m in ZOO.values()
    ]
