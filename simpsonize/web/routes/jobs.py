"""REST API for jobs: /api/v1/jobs."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from simpsonize.queue.jobstate import JOBS_PATH, JobState
from simpsonize.queue.jobstore import JobStore
from simpsonize.queue.longpoll import MAX_WAIT, CompletionWaiter
from simpsonize.web.deps import ServiceUnavailable, get_store, submit_upload
from simpsonize.web.guard import TooManyRequests
from simpsonize.web.schemas import ErrorResponse, JobCreated
from simpsonize.web.uploads import FIELD, UploadError

PREFIX = JOBS_PATH
log = logging.getLogger("simpsonize.web")
router = APIRouter(prefix=PREFIX, tags=["jobs"])

NOT_FOUND = (
    "No such job: it never existed, has expired, was deleted, or was lost when the service restarted. "
    "Please upload the photo again."
)
_errors = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        404: "Unknown, expired or deleted job.",
        # simpsonize.web.main answers every validation error with one sentence, not FastAPI's list: document that shape.
        422: "A parameter is not valid (e.g. download is not a boolean, or wait is over 30 seconds).",
    }.items()
}

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "A photo with a face: JPEG, PNG, WebP, HEIC or AVIF.",
                        }
                    },
                }
            }
        },
    }
}


def error(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


@router.post(
    "",
    status_code=202,
    response_model=JobCreated,
    openapi_extra=UPLOAD_BODY,
    summary="Upload a photo; it is validated, normalised and queued.",
    responses={
        413: {"model": ErrorResponse, "description": "File or pixel count over the limit."},
        415: {"model": ErrorResponse, "description": "Not a JPEG, PNG, WebP, HEIC or AVIF image."},
        403: {"model": ErrorResponse, "description": "Sent by a browser from another site."},
        408: {"model": ErrorResponse, "description": "The body took longer than the upload timeout."},
        422: {
            "model": ErrorResponse,
            "description": f"No multipart field '{FIELD}', or a photo too small "
            "(under 64 px on a side) or too long and thin for a face.",
        },
        429: {
            "model": ErrorResponse,
            "description": "Too many uploads from this client, or too many of its photos waiting; see Retry-After.",
        },
        503: {"model": ErrorResponse, "description": "Busy, queue full or unreachable; see Retry-After."},
    },
)
async def create_job(request: Request):
    try:
        job_id = await submit_upload(request)
    except UploadError as exc:
        return error(exc.status_code, exc.detail)
    except TooManyRequests as exc:
        return error(429, exc.detail, {"Retry-After": str(exc.retry_after)})
    except ServiceUnavailable as exc:
        return error(503, exc.detail, {"Retry-After": str(exc.retry_after)})
    url = f"{PREFIX}/{job_id}"
    body = JobCreated(id=job_id, status_url=url, result_url=f"{url}/result")
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": url})


WAIT_DESCRIPTION = (
    f"Long poll: wait up to this many seconds (0 to {MAX_WAIT:g}) for the job to end. The answer comes as soon as the "
    "job is finished or failed (or deleted: 404), else with the current state once the time is up. Without it, the "
    "answer is immediate. Waiting costs the server no thread; ask again with `wait` until the status is final."
)


@router.get(
    "/{job_id}",
    response_model=JobState,
    responses=_errors,
    summary="A job's state and timings; with ?wait=S, as soon as it ends (or after S seconds).",
)
async def get_job(
    request: Request,
    response: Response,
    job_id: str,
    wait: Annotated[float | None, Query(ge=0, le=MAX_WAIT, description=WAIT_DESCRIPTION)] = None,
    store: JobStore = Depends(get_store),
):
    view = await run_in_threadpool(store.view, job_id)
    if view is not None and wait and not view.done:
        waiter: CompletionWaiter = request.app.state.waiter
        try:
            await waiter.wait(store.prefix, job_id, wait)
        except RedisError as exc:  # answer with the state as it is (a Redis that is gone fails the read below too)
            log.warning("Long poll on a job failed: %s", exc)
        view = await run_in_threadpool(store.view, job_id)
    if view is None:
        return error(404, NOT_FOUND)
    response.headers["Cache-Control"] = "no-store"
    return view  # serialised through the response model, JobState


def _image(store: JobStore, job_id: str, which: str, download: bool, face: int = 1, jpeg: bool = False) -> Response:
    view = store.view(job_id)
    if view is None:
        return error(404, NOT_FOUND)
    if view.status == "failed":
        return error(409, f"The job failed, so there is no image: {view.error}")
    if view.status != "finished":
        return error(409, f"The job is {view.status}; the image is ready once its status is 'finished'.")
    count = view.face_count or 1
    if face > count:
        return error(404, f"This photo has {count} face{'s' if count != 1 else ''} drawn; ask for face 1 to {count}.")
    field = "composite_jpeg" if jpeg else which if face == 1 else f"{which}:{face}"
    data = store.image(job_id, field)
    if data is None and field == "composite":  # SIMPSONIZE_COMPOSITE_LOSSLESS off: the JPEG is all there is
        data, field = store.image(job_id, "composite_jpeg"), "composite_jpeg"
    if data is None:
        return error(404, NOT_FOUND)
    name = {"image": "simpsonized", "face": "face", "composite": "simpsonized-photo"}[which]
    suffix = "" if face == 1 else f"-face{face}"
    # Drawings are PNGs; the crops and composite_jpeg JPEGs (a crop stored by a worker of before is a PNG).
    is_jpeg = not data.startswith(b"\x89PNG")
    disposition = "attachment" if download else "inline"
    extension = "jpg" if is_jpeg else "png"
    return Response(
        data,
        media_type="image/jpeg" if is_jpeg else "image/png",
        headers={
            "Content-Disposition": f'{disposition}; filename="{name}{suffix}-{job_id[:8]}.{extension}"',
            "Cache-Control": "private, max-age=300",
        },
    )


_image_responses = {
    200: {"content": {"image/png": {}}, "description": "PNG"},
    **_errors,
    409: {"model": ErrorResponse, "description": "The job has not finished (or failed)."},
}
FACE = Query(ge=1, le=64, description="Which face of a group photo: 1 (the largest, the default) to face_count.")


@router.get(
    "/{job_id}/result",
    response_class=Response,
    responses=_image_responses,
    summary="The Simpsonized face (PNG); ?face=N for face N of a group photo. ?download=1 for an attachment.",
)
def get_result(
    job_id: str, download: bool = False, face: Annotated[int, FACE] = 1, store: JobStore = Depends(get_store)
):
    return _image(store, job_id, "image", download, face)


@router.get(
    "/{job_id}/input",
    response_class=Response,
    responses={**_image_responses, 200: {"content": {"image/jpeg": {}}, "description": "JPEG"}},
    summary="The aligned face crop that was translated (JPEG), for a before/after view; ?face=N as for /result.",
)
def get_input(
    job_id: str, download: bool = False, face: Annotated[int, FACE] = 1, store: JobStore = Depends(get_store)
):
    return _image(store, job_id, "face", download, face)


@router.get(
    "/{job_id}/composite",
    response_class=Response,
    responses={
        **_image_responses,
        200: {
            "content": {"image/png": {}, "image/jpeg": {}},
            "description": "PNG (lossless), or JPEG with ?format=jpeg",
        },
    },
    summary="Your photo with every drawn head pasted back: PNG (lossless), ?format=jpeg for the lighter "
    "copy the page shows. ?download=1 for an attachment.",
)
def get_composite(
    job_id: str,
    download: bool = False,
    format: Annotated[
        Literal["png", "jpeg"],
        Query(description="png (lossless, the default) or jpeg (quality 90, several times smaller)."),
    ] = "png",
    store: JobStore = Depends(get_store),
):
    return _image(store, job_id, "composite", download, jpeg=format == "jpeg")


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    responses=_errors,
    summary="Forget the job's input and results (drawings, crops, composite) now.",
)
def delete_job(job_id: str, store: JobStore = Depends(get_store)):
    if not store.delete(job_id):
        return error(404, NOT_FOUND)
    return Response(status_code=204)
