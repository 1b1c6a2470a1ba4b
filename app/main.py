"""The FastAPI application. Importing it must never import TensorFlow."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import OperationalError

from app import __version__, web
from app.api import api_router, errors
from app.api.body_limit import FORM_OVERHEAD_BYTES, BodyLimit, Limit
from app.api.early_auth import AuthenticateBeforeBody
from app.api.health import database_unavailable
from app.api.metrics import RequestTimer
from app.core.config import get_settings, make_files_private
from app.core.heap import freeze_startup_objects

make_files_private()  # also when served as `uvicorn app.main:app`


@asynccontextmanager
async def _lifespan(_app: object) -> AsyncIterator[None]:
    freeze_startup_objects()  # requests then pause for their own garbage only
    yield


# /docs and /redoc with their scripts served by the app itself, not a CDN: they work on an
# air-gapped lab network.
app = FastAPIOffline(
    title="Trainyard",
    version=__version__,
    description="Submit TensorFlow training jobs, follow every epoch, fetch plots and models.",
    lifespan=_lifespan,
)
errors.install(app)
app.add_exception_handler(OperationalError, database_unavailable)


def _body_limit(content_type: str) -> Limit:
    settings = get_settings()
    if content_type.startswith("multipart/form-data"):  # a dataset upload
        return Limit(
            settings.max_dataset_bytes + FORM_OVERHEAD_BYTES,
            f"upload over the limit of {settings.max_dataset_bytes} bytes "
            "(TRAINYARD_MAX_DATASET_BYTES)",
        )
    return Limit(
        settings.max_body_bytes,
        f"request body over the limit of {settings.max_body_bytes} bytes "
        "(TRAINYARD_MAX_BODY_BYTES)",
    )


app.add_middleware(BodyLimit, limit_for=_body_limit)
# Added last, so it runs first: a body is neither counted nor read before the token is checked.
app.add_middleware(AuthenticateBeforeBody)
app.add_middleware(RequestTimer)  # outermost: every answer is timed, early refusals too
app.include_router(api_router)
app.include_router(web.router)  # the dashboard at /
app.mount("/ui", web.assets, name="ui")
