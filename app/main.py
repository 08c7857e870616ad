"""The FastAPI application. ``create_app(settings)`` builds it; ``uvicorn --factory app.main:create_app`` serves it.

No torch here, ever: the web process validates and queues, workers (worker/) run the model.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.jobstore import JobStore, connect
from app.routes import health, jobs, pages
from app.settings import REPO_ROOT, Settings, get_settings

DESCRIPTION = """Turn a selfie into a Simpsons character.

Upload a photo to `POST /api/v1/jobs`, poll `GET /api/v1/jobs/{id}` until its status is `finished` (or `failed`,
with a reason), then fetch `GET /api/v1/jobs/{id}/result` (PNG). Inputs are deleted when a job ends; results
expire after a while, or at once with `DELETE /api/v1/jobs/{id}`."""


def _sentence(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "Invalid request (" + "; ".join(parts) + ")."


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.redis_url:
        raise ValueError("REDIS_URL is not set: run `simpsonize serve`, which starts an embedded Redis, "
                         "or set REDIS_URL.")
    app = FastAPI(title="Simpsonize", version="1", description=DESCRIPTION)
    app.state.settings = settings
    app.state.store = JobStore(settings, connect(settings.redis_url))
    app.state.templates = Jinja2Templates(directory=str(REPO_ROOT / "templates"))
    app.mount("/static", StaticFiles(directory=str(REPO_ROOT / "static")), name="static")
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(pages.router)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _sentence(exc)}, status_code=422)

    return app
