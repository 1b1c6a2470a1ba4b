"""Request dependencies shared by the routers."""

from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from app.core.db import session_scope

SessionDep = Annotated[Session, Depends(session_scope)]
