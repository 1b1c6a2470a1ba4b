"""The dashboard: one page at `/` and its assets under /ui/, all served by the app itself (no
CDN, no build step), so it works on an air-gapped lab network. It is a client of the same
API as scripts: it holds the user's token in the browser session and sends it as a bearer
header, never in a URL."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# The page runs only its own script and styles and talks only to this origin.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
def dashboard() -> FileResponse:
    return FileResponse(
        STATIC / "index.html",
        headers={"Content-Security-Policy": POLICY, "Cache-Control": "no-cache"},
    )


assets = StaticFiles(directory=STATIC)
