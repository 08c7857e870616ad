"""The FastAPI application. ``create_app(settings)`` builds it; ``uvicorn --factory simpsonize.web.main:create_app``
serves it.

No torch here, ever: the web process validates and queues, workers (worker/) run the model.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from simpsonize.queue import metrics
from simpsonize.queue.capacity import Admission, JobFootprint
from simpsonize.queue.jobstore import JobStore, connect
from simpsonize.queue.longpoll import CompletionWaiter
from simpsonize.resources import STATIC_DIR, TEMPLATES_DIR
from simpsonize.settings import Settings, get_settings
from simpsonize.web.guard import ClientLimits, UploadGate
from simpsonize.web.http_security import CrossSiteGuard, SecurityHeaders, TrustedHosts, docs_csp
from simpsonize.web.routes import health, jobs, pages

DESCRIPTION = """Turn a selfie into a Simpsons character.

Upload a photo to `POST /api/v1/jobs`, ask `GET /api/v1/jobs/{id}?wait=30` until its status is `finished` (or
`failed`, with a reason): with `wait`, the request returns as soon as the job ends, or with the current state after
that many seconds. Then fetch `GET /api/v1/jobs/{id}/result` (PNG). Inputs are deleted when a job ends; results
expire after a while, or at once with `DELETE /api/v1/jobs/{id}`."""


def _sentence(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "Invalid request (" + "; ".join(parts) + ")."


def allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    """Every method some route serves at this path. Starlette's own 405 names only the first route whose path
    matched, so `/api/v1/jobs/{id}` claimed to allow GET alone although DELETE is served there too."""
    methods: set[str] = {"OPTIONS"}

    def visit(routes) -> None:
        for route in routes:
            if getattr(route, "path", None) is None:  # an included router (FastAPI >= 0.16x wraps them)
                visit(getattr(getattr(route, "original_router", route), "routes", []))
            elif getattr(route, "methods", None) and route.matches(scope)[0] != Match.NONE:
                methods.update(route.methods)

    visit(app.router.routes)
    return sorted(methods)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.redis_url:
        raise ValueError(
            "REDIS_URL is not set: run `simpsonize serve`, which starts an embedded Redis, or set REDIS_URL."
        )
    waiter = CompletionWaiter(settings.redis_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await waiter.aclose()

    app = FastAPI(
        title="Simpsonize", version="1", description=DESCRIPTION, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.waiter = waiter
    app.state.store = JobStore(settings, connect(settings.redis_url))
    app.state.client_limits = ClientLimits(settings, app.state.store.redis)
    app.state.admission = Admission(
        app.state.store.queue, settings.key_prefix, JobFootprint.for_settings(settings.composite_lossless)
    )
    app.state.upload_gate = UploadGate(settings)
    app.state.templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(pages.router)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _sentence(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code != 405:
            return await http_exception_handler(request, exc)
        allow = ", ".join(allowed_methods(app, request.scope))
        if request.method == "OPTIONS":  # what the path offers (RFC 9110 §9.3.7); CORS preflights never get here
            return Response(status_code=204, headers={"Allow": allow})
        return JSONResponse(
            {"detail": f"{request.method} is not allowed here; this path takes {allow}."},
            status_code=405,
            headers={"Allow": allow},
        )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} API")
        return HTMLResponse(page.body, headers={"Content-Security-Policy": docs_csp(page.body.decode())})

    # Outermost last: client address first (from trusted proxies only), then Host, headers, CORS, cross-site.
    app.add_middleware(CrossSiteGuard, api_prefix=jobs.PREFIX, cors_origins=settings.split(settings.cors_origins))
    if cors := settings.split(settings.cors_origins):
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=["Location", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(SecurityHeaders)
    if (hosts := settings.split(settings.allowed_hosts)) and "*" not in hosts:
        # Loopback names stay allowed: the container healthchecks ask http://127.0.0.1:8000/healthz.
        app.add_middleware(TrustedHosts, allowed_hosts=[*hosts, "localhost", "127.0.0.1", "::1"])
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.split(settings.forwarded_allow_ips))
    metrics.install(app, settings)  # GET /metrics, and the request counters around everything above
    return app
