"""Which workers are alive, and what happens to the job of one that is not.

A ``simpsonize worker`` writes a heartbeat (RQ's ``last_heartbeat`` field of its ``rq:worker:NAME`` hash) every
``worker_heartbeat`` seconds from a thread of its own, busy or idle. A worker is *alive* while that heartbeat is
at most 2 x the interval old; RQ's own key TTL (up to 8 minutes) is not used for that.

A job whose worker is gone (SIGKILL, the OOM killer, a lost machine) would stay ``started`` until RQ's maintenance
notices it, minutes later. ``reap`` ends such jobs at once as ``failed`` with ``WORKER_STOPPED``: the launcher calls
it as soon as it sees one of its workers exit, and every live worker calls it once per heartbeat (for workers on
other machines). The job is failed rather than retried on purpose: a photo that kills a worker would kill the next
one too, and the user can upload it again with one click.

No torch here: the web process and the launcher import this module.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from simpsonize.queue import keys, metrics, rq_adapter
from simpsonize.queue.longpoll import notify_done

log = logging.getLogger("simpsonize.liveness")

WORKER_STOPPED = "The worker stopped while working on your photo (it crashed or was restarted); please try again."


def heartbeat_age(redis: Redis, worker_name: str, now: datetime | None = None) -> float | None:
    """Seconds since the worker's last heartbeat; None when it has none or has registered its death."""
    beat = rq_adapter.last_heartbeat(redis, worker_name)
    return None if beat is None else ((now or datetime.now(UTC)) - beat).total_seconds()


def is_alive(redis: Redis, worker_name: str, max_age: float) -> bool:
    age = heartbeat_age(redis, worker_name)
    return age is not None and age <= max_age


def live_workers(queue: Queue, max_age: float) -> list[str]:
    """Names of the workers registered for ``queue`` whose heartbeat is at most ``max_age`` seconds old."""
    now = datetime.now(UTC)
    return [
        name
        for name in rq_adapter.registered_workers(queue)
        if (age := heartbeat_age(queue.connection, name, now)) is not None and age <= max_age
    ]


def reap(queue: Queue, key_prefix: str, max_age: float, dead: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Fail every started job of ``queue`` whose worker is in ``dead`` or has no heartbeat within ``max_age``.

    Returns the ids of the jobs it failed. Their inputs are deleted (the dead worker could not do it); the failure
    keeps RQ's ``failure_ttl``, so it expires like any other failure.
    """
    redis = queue.connection
    reaped = []
    keep = 3600  # seconds the failed-job registry is kept at least, when these failures created it
    for entry, job_id in rq_adapter.started_entries(queue):
        try:
            job = Job.fetch(job_id, connection=redis, serializer=queue.serializer)
        except NoSuchJobError:
            rq_adapter.drop_started_entry(redis, queue, entry)  # the job hash is gone (deleted or expired)
            continue
        if job.get_status(refresh=False) != JobStatus.STARTED:
            continue  # finishing right now; RQ removes the entry itself
        name = job.worker_name or ""
        if name not in dead and name and is_alive(redis, name, max_age):
            continue
        log.warning("Job %s: its worker %s is gone; failing it.", job_id, name or "?")
        job.meta["error"] = WORKER_STOPPED
        job.save_meta()
        with redis.pipeline() as pipe:
            rq_adapter.drop_started_entry(pipe, queue, entry)
            rq_adapter.fail_abandoned(job, f"Worker {name or '?'} stopped while running the job.", pipe)
            pipe.delete(keys.input_key(key_prefix, job_id))
            notify_done(pipe, key_prefix, job_id)  # long polls on the job answer now
            metrics.record(pipe, key_prefix, queue.name, "failed", "worker_stopped")
            pipe.execute()
        reaped.append(job_id)
        keep = max(keep, int(job.failure_ttl or 0))
    failed = rq_adapter.failed_registry_key(queue)
    if reaped and redis.ttl(failed) == -1:  # just created by these failures, and nothing may write there again
        redis.expire(failed, keep)  # it outlives the failures it holds
    return reaped
