"""HTML pages. The basic flow needs no JavaScript: the form posts to /jobs, which redirects to the job's page, which
refreshes itself (meta refresh) until the job is done. static/app.js upgrades / to upload and poll in place."""

from __future__ import annotations

import json
import math
from functools import lru_cache

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from simpsonize.queue.jobstore import JobStore
from simpsonize.resources import EXAMPLES_INDEX
from simpsonize.web.deps import ServiceUnavailable, get_store, submit_upload
from simpsonize.web.guard import TooManyRequests
from simpsonize.web.routes.jobs import NOT_FOUND, PREFIX
from simpsonize.web.uploads import UploadError

EXAMPLES = EXAMPLES_INDEX

router = APIRouter(include_in_schema=False)


def _page(request: Request, template: str, status_code: int = 200, headers=None, **context) -> HTMLResponse:
    settings = request.app.state.settings
    context.setdefault("error", None)
    context.setdefault("examples", examples())
    context.update(
        api=PREFIX,
        max_upload_bytes=settings.max_upload_bytes,
        max_mb=round(settings.max_upload_bytes / (1024 * 1024)),
        ttl_minutes=max(1, round(settings.result_ttl / 60)),
        poll_interval_ms=settings.poll_interval_ms,
        max_side=settings.max_side,  # the page shrinks bigger photos to this before uploading (static/app.js)
    )
    return request.app.state.templates.TemplateResponse(
        request, template, context, status_code=status_code, headers=headers
    )


@lru_cache(maxsize=1)
def examples() -> tuple[dict, ...]:
    """The home page's before/after examples (name, alt, caption, credit, width, height); none if not made yet."""
    try:
        return tuple(json.loads(EXAMPLES.read_text()))
    except (OSError, ValueError):
        return ()


@router.get("/", response_class=HTMLResponse)
def index(request: Request, deleted: bool = False):
    notice = "Your photo and its result were deleted." if deleted else None
    return _page(request, "index.html", notice=notice)


@router.post("/jobs", response_class=HTMLResponse)
async def upload_form(request: Request):
    try:
        job_id = await submit_upload(request)
    except UploadError as exc:
        return _page(request, "index.html", status_code=exc.status_code, error=exc.detail)
    except (TooManyRequests, ServiceUnavailable) as exc:
        return _page(
            request,
            "index.html",
            status_code=429 if isinstance(exc, TooManyRequests) else 503,
            error=exc.detail,
            headers={"Retry-After": str(exc.retry_after)},
        )
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, store: JobStore = Depends(get_store)):
    view = store.view(job_id)
    if view is None:
        return _page(request, "index.html", status_code=404, error=NOT_FOUND)
    refresh = None if view.done else max(1, math.ceil(request.app.state.settings.poll_interval_ms / 1000))
    return _page(request, "job.html", job=view, refresh=refresh, headers={"Cache-Control": "no-store"})


@router.post("/jobs/{job_id}/delete")
def delete_form(job_id: str, store: JobStore = Depends(get_store)):
    store.delete(job_id)
    return RedirectResponse("/?deleted=1", status_code=303)
