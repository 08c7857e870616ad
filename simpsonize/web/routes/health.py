"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from simpsonize.queue.capacity import FULL_READINESS
from simpsonize.queue.jobstore import JobStore
from simpsonize.web.deps import get_store
from simpsonize.web.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The web process is up.")
def healthz():
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health}},
    summary="Redis is reachable and has room, and at least one worker is alive.",
)
def readyz(request: Request, store: JobStore = Depends(get_store)):
    ready, detail = store.readiness()
    try:
        if (
            ready and not request.app.state.admission.room()[0]
        ):  # uploads are refused for memory (simpsonize.queue.capacity)
            ready, detail = False, FULL_READINESS
    except RedisError as exc:  # gone since the ping
        ready, detail = False, f"Redis is not reachable ({type(exc).__name__})."
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "detail": detail},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )
