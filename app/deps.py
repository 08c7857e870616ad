"""Request-scoped access to the objects ``create_app`` keeps on ``app.state``."""

from __future__ import annotations

from fastapi import Request
from fastapi.templating import Jinja2Templates
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from app.jobstore import JobStore, QueueFull
from app.settings import Settings
from app.uploads import normalise, read_upload


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_templates(request: Request) -> Jinja2Templates:
    return request.app.state.templates


class ServiceUnavailable(Exception):
    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


async def submit_upload(request: Request) -> str:
    """Validate the request's upload and enqueue it; returns the job id.

    Raises ``UploadError`` (4xx) or ``ServiceUnavailable`` (503: queue full or Redis unreachable).
    """
    store: JobStore = request.app.state.store
    settings: Settings = request.app.state.settings
    busy = ServiceUnavailable("Too many photos are waiting right now; please try again in a few seconds.",
                              settings.retry_after)
    try:
        await run_in_threadpool(store.check_capacity)  # before reading the body: no work when full
        upload = await read_upload(request, settings.max_upload_bytes)
        image = await run_in_threadpool(normalise, upload.data, max_pixels=settings.max_pixels,
                                        max_side=settings.max_side)
        return await run_in_threadpool(store.submit, image.jpeg)
    except QueueFull:
        raise busy from None
    except RedisError as exc:
        raise ServiceUnavailable("The job queue is unreachable right now; please try again shortly.",
                                 settings.retry_after) from exc
