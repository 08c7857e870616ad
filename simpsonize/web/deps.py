"""Request-scoped access to the objects ``create_app`` keeps on ``app.state``."""

from __future__ import annotations

from fastapi import Request
from fastapi.templating import Jinja2Templates
from redis.exceptions import OutOfMemoryError, RedisError
from starlette.concurrency import run_in_threadpool

from simpsonize.queue.capacity import BUSY, BUSY_RETRY_AFTER, Admission, StorageFull
from simpsonize.queue.jobstore import JobStore, QueueFull
from simpsonize.settings import Settings
from simpsonize.web.guard import Busy, ClientLimits, UploadGate, client_key, with_deadline
from simpsonize.web.uploads import UploadError, normalise, read_upload


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

    In order, each step before any work of the next: the client's rate limit and job places (429), room in the
    queue and in Redis's memory (503), a free upload slot (503), the body within ``upload_timeout`` (408) and its size
    (413), a decode when a decoder is free, then room for this photo in Redis and the queue (503 when full). Raises
    ``UploadError`` (4xx), ``TooManyRequests`` (429) or ``ServiceUnavailable`` (503: busy, queue or Redis full,
    Redis unreachable).
    """
    store: JobStore = request.app.state.store
    settings: Settings = request.app.state.settings
    limits: ClientLimits = request.app.state.client_limits
    gate: UploadGate = request.app.state.upload_gate
    admission: Admission = request.app.state.admission
    busy = ServiceUnavailable(
        "Too many photos are waiting right now; please try again in a few seconds.", settings.retry_after
    )
    client = client_key(request.client.host if request.client else None)
    token = None
    try:
        await run_in_threadpool(limits.hit, client)
        token = await run_in_threadpool(limits.reserve, client)
        await run_in_threadpool(store.check_capacity)  # before reading the body: no work when full
        await run_in_threadpool(admission.check)  # room in Redis for a photo of a usual size and its result
        async with gate.upload():
            try:
                upload = await with_deadline(read_upload(request, settings.max_upload_bytes), settings.upload_timeout)
            except TimeoutError:
                raise UploadError(
                    408,
                    f"The upload took longer than {settings.upload_timeout:g} seconds; "
                    "please try again on a faster connection or with a smaller photo.",
                ) from None
            image = await gate.decode(
                normalise,
                upload.data,
                max_pixels=settings.max_pixels,
                max_side=settings.max_side,
                max_pixels_full_decode=settings.max_pixels_full_decode,
            )
            del upload
        await run_in_threadpool(admission.check, len(image.jpeg))  # and for this one
        job_id = await run_in_threadpool(store.submit, image.jpeg)
        admission.stored(len(image.jpeg))
        await run_in_threadpool(limits.confirm, client, token, job_id)
        token = None
        return job_id
    except Busy:
        raise ServiceUnavailable(
            "The server is receiving too many photos right now; please try again in a few seconds.",
            settings.retry_after,
        ) from None
    except QueueFull:
        raise busy from None
    except (StorageFull, OutOfMemoryError) as exc:  # Redis is (nearly) full: room comes back as results go
        request.app.state.metrics.memory_refusals.inc()
        raise ServiceUnavailable(BUSY, max(settings.retry_after, BUSY_RETRY_AFTER)) from exc
    except RedisError as exc:
        raise ServiceUnavailable(
            "The job queue is unreachable right now; please try again shortly.", settings.retry_after
        ) from exc
    finally:
        if token is not None:
            try:
                await run_in_threadpool(limits.release, client, token)
            except RedisError:
                pass  # the reservation expires on its own
