"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from app.deps import get_store
from app.jobstore import JobStore
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The web process is up.")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}},
            summary="Redis is reachable and at least one worker is alive.")
def readyz(store: JobStore = Depends(get_store)):
    ready, detail = store.readiness()
    return JSONResponse({"status": "ready" if ready else "not ready", "detail": detail},
                        status_code=200 if ready else 503, headers={"Cache-Control": "no-store"})
