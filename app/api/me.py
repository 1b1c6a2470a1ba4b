"""Who is asking (GET /me) and who used the GPUs lately (GET /usage): what the dashboard
shows beside the jobs."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from app.api.auth import UNAUTHORIZED, CurrentUser, current_user
from app.api.deps import SessionDep
from app.core.metrics import gpu_seconds_since
from app.core.models import utcnow

router = APIRouter(tags=["users"], dependencies=[Depends(current_user)], responses=UNAUTHORIZED)


class Me(BaseModel):
    name: str
    is_admin: bool = Field(description="Admins may cancel and delete anyone's jobs.")


class UserUsage(BaseModel):
    user: str
    gpu_hours_24h: float = Field(description="GPU-hours held by the user's jobs in the last 24 h.")
    gpu_hours_7d: float = Field(description="GPU-hours held in the last 7 days.")


@router.get("/me", response_model=Me)
def me(user: CurrentUser) -> Me:
    """The user the bearer token belongs to."""
    return Me(name=user.name, is_admin=user.is_admin)


@router.get("/usage", response_model=list[UserUsage])
def usage(session: SessionDep) -> list[UserUsage]:
    """GPU-hours per user over the last 24 hours and 7 days, from the GPU lease history (a
    lease still held counts up to now); users with none in 7 days are left out."""
    now = utcnow()
    day = gpu_seconds_since(session, now - timedelta(days=1), now)
    week = gpu_seconds_since(session, now - timedelta(days=7), now)
    return [
        UserUsage(
            user=name,
            gpu_hours_24h=round(day.get(name, 0.0) / 3600, 3),
            gpu_hours_7d=round(seconds / 3600, 3),
        )
        for name, seconds in sorted(week.items(), key=lambda item: (-item[1], item[0]))
    ]
