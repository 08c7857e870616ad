"""The job function RQ runs, and what a worker hands it: its one Simpsonizer and the outcomes of its batches.

``simpsonize_bytes`` is the plain function (photo bytes in, PNGs + face box + timings out). ``process_job`` is what
the app enqueues (by name, ``simpsonize.worker.jobs.process_job``): it reads the normalised upload from Redis, runs
``simpsonize_bytes``, stores the result with its TTL and deletes the input whatever happens. A photo the model
rejects (no face, unreadable) fails the job with the model's user-facing sentence in ``job.meta["error"]``.

The worker (``simpsonize.worker.model_worker.ModelWorker``) owns a ``PhotoJobs``: a ``ModelHolder`` (the Simpsonizer,
loaded once, or a stub a test gives it) and the outcomes of the batch it is running. While it works, ``process_job``
finds them through ``serving``; RQ calls the job function by name, with JSON arguments only, so nothing else could
carry them there.

Batches: a worker that takes several jobs at once (``SIMPSONIZE_WORKER_BATCH``) runs their photos through the model
together with ``PhotoJobs.prepare_batch`` first; each job's ``process_job`` then takes its own outcome (its result,
or the error to fail with) instead of running the model, and does the rest as for one photo.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import OutOfMemoryError
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from simpsonize.imaging import jpeg_bytes, png_bytes
from simpsonize.model.errors import SimpsonizeError
from simpsonize.queue import capacity, keys, metrics
from simpsonize.queue.jobstore import GENERIC_FAILURE
from simpsonize.settings import get_settings

# zlib level 1: still lossless, about 11 % more bytes than level 6 for a 256x256 result (132 vs 118 KB) and several
# times quicker to encode (benchmarks/encode_formats.py; its timings so far come from a busy machine only). For a
# 1600x1200 composite it is 15 % bigger than level 6 and 5x quicker (`simpsonize bench composite`, on a busy machine).
PNG_LEVEL = 1
# The page shows the composite as a JPEG (a 1600x1200 photo: about 0.3 MB against 2-2.5 MB as PNG); the download is
# the lossless PNG unless SIMPSONIZE_COMPOSITE_LOSSLESS is off.
COMPOSITE_JPEG_QUALITY = 90
# The face crops are only shown beside their drawings (previews; the downloads are the drawings and the composite):
# as JPEGs they are 12 KB at 45.9 dB PSNR against 86 KB as PNGs (the shipped model, the astronaut; README
# "Capacity"), and every job keeps them in Redis for SIMPSONIZE_RESULT_TTL.
CROP_JPEG_QUALITY = 90


class InputGone(SimpsonizeError):
    def __init__(self) -> None:
        super().__init__("The photo for this job is gone (it expired or was deleted). Please upload it again.")


class ModelHolder:
    """The one Simpsonizer of a worker process: loaded once, before the first job (``load``) or by it (from the
    settings), then used for every job. A test gives it a ready model, or a stub, instead."""

    def __init__(self, model=None) -> None:
        self._model = model
        self._lock = threading.Lock()

    def load(
        self,
        weights: str | Path | None = None,
        device: str | None = None,
        num_threads: int | None = None,
        precision: str = "fp32",
        batch_size: int = 1,
    ):
        """Build the Simpsonizer. ``precision``: fp32, bf16 or auto (bf16 on CUDA), bf16 only where it passes the
        Simpsonizer's check; ``batch_size``: the largest batch to warm up for."""
        from simpsonize.model.composite import FaceSelection
        from simpsonize.model.pipeline import Simpsonizer

        settings = get_settings()
        faces = FaceSelection(min_face=settings.min_face, max_faces=settings.max_faces)
        with self._lock:
            self._model = Simpsonizer(
                weights=weights, device=device, num_threads=num_threads, precision=precision, faces=faces
            )
            self._model.warm_up(batch_size)
            return self._model

    def get(self):
        """The Simpsonizer; loaded from the settings now if ``load`` was not called."""
        if self._model is None:
            settings = get_settings()
            return self.load(settings.weights, settings.device, settings.worker_threads, settings.worker_precision)
        return self._model


@dataclass
class JobOutput:
    image_png: bytes  # the Simpsonized face (the largest)
    face_jpeg: bytes  # the aligned face crop that was translated, same size
    meta: dict[str, Any] = field(default_factory=dict)  # face box/landmarks, timings (seconds), size
    # The other faces' (drawing PNG, crop JPEG), the second largest first; the composite as JPEG and lossless PNG
    # (or b"").
    more_faces: list[tuple[bytes, bytes]] = field(default_factory=list)
    composite_jpeg: bytes = b""
    composite_png: bytes = b""

    def fields(self) -> dict[str, bytes]:
        """The result hash's image fields (simpsonize.queue.keys: ``image``/``face`` for face 1, ``image:N``/``face:N``
        for the others, ``composite_jpeg`` and ``composite``)."""
        stored = {"image": self.image_png, "face": self.face_jpeg}
        for n, (image_png, face_jpeg) in enumerate(self.more_faces, start=2):
            stored[f"image:{n}"], stored[f"face:{n}"] = image_png, face_jpeg
        if self.composite_jpeg:
            stored["composite_jpeg"] = self.composite_jpeg
        if self.composite_png:
            stored["composite"] = self.composite_png
        return stored


def simpsonize_bytes(data: bytes, simpsonizer) -> JobOutput:
    """One photo's bytes -> result PNG, face-crop JPEG and metadata. Raises ``SimpsonizeError`` with a sentence."""
    return encode_result(simpsonizer.simpsonize(data))


def encode_result(result, lossless_composite: bool | None = None) -> JobOutput:
    """A ``SimpsonizeResult`` -> each face's drawing (PNG) and crop (JPEG), its composite (JPEG, and PNG when
    ``lossless_composite``, by default ``SIMPSONIZE_COMPOSITE_LOSSLESS``) and metadata (with the encode time)."""
    if lossless_composite is None:
        lossless_composite = get_settings().composite_lossless
    started = time.perf_counter()
    image_png, face_jpeg = png_bytes(result.image, PNG_LEVEL), jpeg_bytes(result.face_crop, CROP_JPEG_QUALITY)
    more = [(png_bytes(f.image, PNG_LEVEL), jpeg_bytes(f.face_crop, CROP_JPEG_QUALITY)) for f in result.faces[1:]]
    composite_jpeg = composite_png = b""
    if result.composite is not None:
        composite_jpeg = jpeg_bytes(result.composite, COMPOSITE_JPEG_QUALITY)
        if lossless_composite:
            composite_png = png_bytes(result.composite, PNG_LEVEL)
    meta = result.to_dict()
    meta["timings"]["encode"] = round(time.perf_counter() - started, 4)
    meta["composite"] = {"jpeg_bytes": len(composite_jpeg), "png_bytes": len(composite_png)} if composite_jpeg else None
    return JobOutput(
        image_png=image_png,
        face_jpeg=face_jpeg,
        meta=meta,
        more_faces=more,
        composite_jpeg=composite_jpeg,
        composite_png=composite_png,
    )


@dataclass
class Prepared:
    """One job's photo, run in a batch before its job function runs."""

    outcome: Any  # its SimpsonizeResult, or the exception its job fails with
    started: float  # time.perf_counter() when the batch started: the job's time counts from there
    batch: int  # how many jobs the batch held


@dataclass
class PhotoJobs:
    """What a worker hands the job functions it runs: its model, and each job's outcome from the batch it ran."""

    model: ModelHolder = field(default_factory=ModelHolder)
    prepared: dict[str, Prepared] = field(default_factory=dict)  # job id -> its photo's outcome

    def prepare_batch(self, jobs: list[tuple[str, str]], redis, started: float | None = None) -> None:
        """Run the photos of ``jobs`` ((job id, key prefix) pairs) through the model together; each job's
        ``process_job`` then finishes with its own outcome. A missing input (expired, deleted) or a photo the model
        rejects is that job's failure only. Any other error raises, and nothing is prepared: the caller lets each job
        run on its own then, so that only the photo that causes it fails."""
        started = time.perf_counter() if started is None else started
        inputs = redis.mget([keys.input_key(prefix, job_id) for job_id, prefix in jobs])
        present = [(job_id, data) for (job_id, _), data in zip(jobs, inputs) if data is not None]
        outcomes = self.model.get().simpsonize_many([data for _, data in present]) if present else []
        by_id = dict(zip((job_id for job_id, _ in present), outcomes))
        for job_id, _ in jobs:
            self.prepared[job_id] = Prepared(by_id[job_id] if job_id in by_id else InputGone(), started, len(jobs))

    def fail_batch(self, job_ids: list[str], error: BaseException, started: float) -> None:
        """Every job of a batch fails with ``error`` (a copy each), e.g. when the batch ran past the job timeout."""
        for job_id in job_ids:
            self.prepared[job_id] = Prepared(type(error)(*error.args), started, len(job_ids))

    def discard(self, job_ids) -> None:
        """Forget what was prepared for jobs that will not run here after all."""
        for job_id in job_ids:
            self.prepared.pop(job_id, None)


_serving: ContextVar[PhotoJobs] = ContextVar("simpsonize_photo_jobs")


@contextmanager
def serving(photo_jobs: PhotoJobs) -> Iterator[PhotoJobs]:
    """While the block runs (a worker's work loop), ``process_job`` uses ``photo_jobs``."""
    token = _serving.set(photo_jobs)
    try:
        yield photo_jobs
    finally:
        _serving.reset(token)


@metrics.observed  # finished/failed/retried and the stage times, into Redis for GET /metrics
def process_job(job_id: str, key_prefix: str, result_ttl: int) -> dict[str, Any]:
    """RQ entry point. Returns the (small) metadata, which the result hash also holds."""
    job = get_current_job()
    photo_jobs = _serving.get(None)
    if job is None or photo_jobs is None:
        raise RuntimeError(
            "process_job must run inside a `simpsonize worker` (simpsonize.worker.model_worker.ModelWorker)."
        )
    redis = job.connection
    input_key = keys.input_key(key_prefix, job_id)
    prepared = photo_jobs.prepared.pop(job_id, None)
    started = time.perf_counter() if prepared is None else prepared.started
    try:
        if prepared is None:
            data = redis.get(input_key)
            if data is None:
                raise InputGone()
            output = simpsonize_bytes(data, photo_jobs.model.get())
        elif isinstance(prepared.outcome, BaseException):
            raise prepared.outcome
        else:
            output = encode_result(prepared.outcome)
        model = photo_jobs.model.get()
        meta = {
            **output.meta,
            "worker": {"device": str(model.device)},
            "batch": {
                "size": 1 if prepared is None else prepared.batch,
                "precision": getattr(model, "precision", "fp32"),
            },
        }
        meta["timings"]["job"] = round(time.perf_counter() - started, 4)
        if redis.exists(keys.deleted_key(key_prefix, job_id)):
            return {"deleted": True}
        result_key = keys.result_key(key_prefix, job_id)

        def store() -> None:
            with redis.pipeline() as pipe:
                pipe.hset(result_key, mapping={**output.fields(), "meta": json.dumps(meta)})
                pipe.expire(result_key, result_ttl)
                pipe.execute()

        capacity.with_room(store)  # a full Redis gets room back as other results are deleted or expire
        if redis.exists(keys.deleted_key(key_prefix, job_id)):  # deleted while we were storing
            redis.delete(result_key)
        return meta
    except SimpsonizeError as exc:
        _record_failure(job, str(exc), started)
        raise
    except OutOfMemoryError:  # Redis stayed full through every retry: this job's result cannot be kept
        redis.delete(input_key)  # first, so that the failure's own record has room
        _record_failure(job, capacity.FULL_FAILURE, started)
        raise
    except JobTimeoutException:
        _record_failure(job, f"Simpsonizing took longer than {job.timeout} seconds. Please try again later.", started)
        raise
    except Exception as exc:
        # Causes that can be named get their own sentence; the generic one is for real bugs only (RQ logs their
        # traceback: ModelWorker.handle_exception passes them on).
        _record_failure(job, OUT_OF_MEMORY if _is_out_of_memory(exc) else GENERIC_FAILURE, started)
        raise
    finally:
        redis.delete(input_key)


OUT_OF_MEMORY = (
    "The server ran out of memory while working on this photo. Please try again in a minute, or upload a smaller photo."
)


def _is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's (CUDA/MPS) OutOfMemoryError, recognised by name: no torch import needed here."""
    return isinstance(exc, MemoryError) or (
        type(exc).__name__ == "OutOfMemoryError" and not isinstance(exc, OutOfMemoryError)
    )  # redis's: Redis is full


def _record_failure(job, message: str, started: float) -> None:
    job.meta["error"] = message
    job.meta["timings"] = {"job": round(time.perf_counter() - started, 4)}
    try:
        capacity.with_room(job.save_meta)
    except Exception:  # Redis gone or full: RQ will fail the job anyway, with the generic sentence
        pass
