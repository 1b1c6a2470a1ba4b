"""Request dependencies and parameter types shared by the routers."""

import re
from typing import Annotated, Any

from fastapi import Depends
from pydantic import BeforeValidator
from sqlalchemy.orm import Session

from app.core.db import request_session

SessionDep = Annotated[Session, Depends(request_session)]


def _decimal_digits(value: Any) -> Any:
    # Python's int() reads "1_0" as 10 and " +5" as 5: an id in a URL is digits, nothing else.
    if isinstance(value, str) and not re.fullmatch(r"[0-9]+", value):
        raise ValueError("an id is written in decimal digits only")
    return value


# Put it after the Path(...) in Annotated: placed before it, the Path's bounds reach the
# OpenAPI document as "ge"/"le", which JSON Schema does not know, instead of minimum/maximum.
DecimalDigits = BeforeValidator(_decimal_digits)
