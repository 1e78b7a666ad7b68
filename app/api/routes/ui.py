"""The dashboard: the static files of app/ui served at /ui/. Open, like any static page: the page itself asks for
an API key and sends it on every API call."""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parents[2] / "ui"

router = APIRouter(include_in_schema=False)


@router.get("/ui")
def ui() -> RedirectResponse:
    """/ui -> /ui/ (relative, so it works under a path prefix too): the page's relative links need the slash."""
    return RedirectResponse("ui/")


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
