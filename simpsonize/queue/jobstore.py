"""Queue client: enqueue a normalised photo, report a job's state, hand out its images, forget it.

Everything the service writes to Redis carries a TTL: the input (``input_ttl``), the result hash and RQ's job hash,
result and failure (``result_ttl``), and RQ's queue list and registries, whose TTL is refreshed on every write
(an entry in them is useless once the job it names has expired).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import WatchError
from redis.retry import Retry
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from simpsonize.queue import keys, liveness, rq_adapter
from simpsonize.queue.jobstate import JobState
from simpsonize.queue.longpoll import notify_done
from simpsonize.settings import Settings

# Job data, meta and results are JSON, never pickles: whoever can write to Redis must not be able to run code in the
# web process or the workers. Every Queue, Job.fetch and Worker uses this.
SERIALIZER = JSONSerializer
SOCKET_TIMEOUT = 10.0  # seconds: a Redis that stops answering fails the request (503) instead of hanging it

GENERIC_FAILURE = "Something went wrong while Simpsonizing this photo. Please try again."
EXPIRED_FAILURE = "The job was stopped before it finished. Please try again."


class QueueFull(Exception):
    """More jobs are waiting than ``max_queue``."""


def connect(url: str) -> Redis:
    """A Redis client for ``redis://``, ``rediss://`` or ``unix://`` URLs.

    A command that finds the connection broken (Redis restarted) reconnects and is retried a few times within about
    half a second; a Redis that stays away gives a ``RedisError`` fast, which the app answers with 503.
    """
    return Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.2), 3),
    )


def refresh_rq_ttls(queue: Queue, ttl: int) -> None:
    """Give RQ's long-lived bookkeeping keys for ``queue`` a TTL of ``ttl`` seconds from now.

    RQ never expires its queue list, intermediate list, queue set and job registries; they only hold ids. The app
    refreshes them on every enqueue and the worker after every dequeue and every job (always to the same ``ttl``,
    longer than any job or result lives),
    so they vanish ``ttl`` after the last activity, by which time every id in them has expired anyway.
    """
    with queue.connection.pipeline(transaction=False) as pipe:
        for key in rq_adapter.bookkeeping_keys(queue):
            pipe.expire(key, ttl)  # a no-op on a missing key
        pipe.execute()


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds()), 3)


class JobStore:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.queue = Queue(settings.queue_name, connection=redis, serializer=SERIALIZER)
        self.prefix = settings.key_prefix

    # -- writing -------------------------------------------------------------------------------------------------
    def check_capacity(self) -> None:
        if self.queue.count >= self.settings.max_queue:
            raise QueueFull()

    def submit(self, image: bytes) -> str:
        """Store the normalised photo and enqueue its job; returns the new job id.

        The queue-full check and the enqueue are one atomic step: a transaction that WATCHes the queue list, so
        two uploads racing for the last place cannot both get it (the loser re-checks and gets ``QueueFull``).
        Nothing is written when the queue is full.
        """
        s = self.settings
        queue = self.queue
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(queue.key)
                    if pipe.llen(queue.key) >= s.max_queue:
                        raise QueueFull()
                    job_id = keys.new_job_id()
                    pipe.multi()
                    pipe.set(keys.input_key(self.prefix, job_id), image, ex=s.input_ttl)
                    queue.enqueue_call(
                        keys.JOB_FUNCTION,
                        args=(job_id, self.prefix, s.result_ttl),
                        job_id=job_id,
                        description="simpsonize photo",
                        ttl=s.queue_ttl,
                        result_ttl=s.result_ttl,
                        failure_ttl=s.result_ttl,
                        timeout=s.job_timeout,
                        pipeline=pipe,
                    )
                    pipe.execute()
                    break
                except WatchError:  # another upload changed the queue between our check and our enqueue
                    continue
        refresh_rq_ttls(queue, s.bookkeeping_ttl)
        return job_id

    def delete(self, job_id: str) -> bool:
        """Forget a job now: input, result and RQ's records. False when there was nothing to forget."""
        if not keys.is_job_id(job_id):
            return False
        job = self._fetch(job_id)
        p = self.prefix
        tombstone = keys.deleted_key(p, job_id)
        deleted_before = bool(self.redis.exists(tombstone))
        existed = self.redis.delete(keys.input_key(p, job_id), keys.result_key(p, job_id)) > 0
        if job is None and not existed:
            return False
        # Tombstone: a job that is running right now must not store its result afterwards, and once it ends, RQ's
        # record of it (kept ``result_ttl``) must not bring it back: the tombstone outlives that record.
        self.redis.set(tombstone, b"1", ex=self.settings.bookkeeping_ttl)
        if job is not None and job.get_status(refresh=False) != JobStatus.STARTED:
            job.delete(remove_from_queue=True)
        notify_done(self.redis, p, job_id)  # its long polls answer 404 now
        return not deleted_before  # deleted already (while it ran): 404, as GET says

    # -- reading -------------------------------------------------------------------------------------------------
    def _fetch(self, job_id: str) -> Job | None:
        if not keys.is_job_id(job_id):
            return None
        try:
            return Job.fetch(job_id, connection=self.redis, serializer=SERIALIZER)
        except NoSuchJobError:
            return None

    def view(self, job_id: str) -> JobState | None:
        """The job's state, or None when it is unknown, expired or deleted."""
        job = self._fetch(job_id)
        if job is None or self.redis.exists(keys.deleted_key(self.prefix, job_id)):
            return None
        rq_status = job.get_status(refresh=False)
        fields: dict[str, Any] = {
            "created_at": _iso(job.enqueued_at or job.created_at),
            "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at),
        }
        timings: dict[str, float] = {}
        if (wait := _seconds(job.enqueued_at, job.started_at)) is not None:
            timings["queued"] = wait
        has_composite = False
        if rq_status == JobStatus.FINISHED:
            meta = self.result_meta(job_id)
            if meta is None:  # the job hash outlived its result by a moment
                return None
            status = "finished"
            face_count = int(meta.get("face_count", 1))
            fields.update(
                face=meta.get("face"), face_count=face_count, faces_found=int(meta.get("faces_found", face_count))
            )
            has_composite = bool(meta.get("composite"))
            timings.update(meta.get("timings", {}))
        elif rq_status == JobStatus.STARTED:
            status = "started"
        elif rq_status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            status = "failed"
            fields["error"] = job.meta.get("error") or self._unexplained_failure(job, rq_status)
            timings.update(job.meta.get("timings", {}))
        else:  # queued, deferred, scheduled, created
            status = "queued"
            position = self.queue.get_job_position(job_id)
            fields.update(position=None if position is None else position + 1, queue_length=self.queue.count)
        if (total := _seconds(job.enqueued_at, job.ended_at)) is not None:
            timings["end_to_end"] = total
        return JobState.of(job_id, status, has_composite=has_composite, timings=timings or None, **fields)

    @staticmethod
    def _unexplained_failure(job: Job, rq_status: JobStatus) -> str:
        """A failure the job function did not explain: RQ found the job abandoned (its worker died and nobody
        reaped it sooner), stopped or canceled it, or the worker could not even record the reason."""
        if rq_status != JobStatus.FAILED:
            return EXPIRED_FAILURE
        return liveness.WORKER_STOPPED if rq_adapter.was_abandoned(job) else GENERIC_FAILURE

    def result_meta(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hget(keys.result_key(self.prefix, job_id), "meta")
        return json.loads(raw) if raw else None

    def image(self, job_id: str, which: str) -> bytes | None:
        """``which`` = "image" (the Simpsonized face), "face" (the face crop it was made from), "image:N"/"face:N"
        (face N of a group photo, N >= 2), "composite" (PNG) or "composite_jpeg"."""
        if self.redis.exists(keys.deleted_key(self.prefix, job_id)):
            return None
        return self.redis.hget(keys.result_key(self.prefix, job_id), which)

    # -- health --------------------------------------------------------------------------------------------------
    def live_workers(self) -> int:
        """Workers registered for our queue whose last heartbeat is at most 2 x ``worker_heartbeat`` old."""
        return len(liveness.live_workers(self.queue, 2 * self.settings.worker_heartbeat))

    def readiness(self) -> tuple[bool, str]:
        try:
            self.redis.ping()
        except Exception as exc:  # redis raises several connection error types
            return False, f"Redis is not reachable ({type(exc).__name__})."
        workers = self.live_workers()
        if workers < 1:
            return False, "No worker is running: photos would wait in the queue forever."
        return True, f"Redis is reachable and {workers} worker{'s' if workers != 1 else ''} alive."
