"""The FastAPI application. Importing it must never import TensorFlow."""

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from app import __version__
from app.api import api_router

app = FastAPI(
    title="Trainyard",
    version=__version__,
    description="Submit TensorFlow training jobs, follow every epoch, fetch plots and models.",
)
app.include_router(api_router)


@app.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/docs")
