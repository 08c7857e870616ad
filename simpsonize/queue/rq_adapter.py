"""RQ at arm's length: the one module that knows RQ's internals.

The service uses RQ's public API where it needs it (``Queue``, ``enqueue_call``, ``Job.fetch``, ``get_current_job``, a
job's status, meta and times). Everything else it relies on is named here, and nowhere else:

- RQ's Redis layout: the job hash and its ``status`` field, the job registries, the worker hash and its heartbeat,
  the worker registration sets;
- its failure bookkeeping for a job that no worker ends (``job_lifecycle.record_job_failure``);
- the steps of its worker loop that ``simpsonize.worker.model_worker.ModelWorker`` overrides or calls
  (``WORKER_HOOKS``), and the one private flag of the worker it reads and sets (``_stop_requested``).

``RELIED_ON`` lists every one of them with the parameters the service calls or overrides it with;
tests/worker/test_rq_adapter.py checks the list against the installed RQ, so that an upgrade that moves any of them
fails there, by name, instead of in a worker at night. pyproject.toml pins RQ to ``SUPPORTED_RQ`` (one minor
version) for the same reason.

No torch, no model: the web process imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.metadata import version

from redis import Redis
from rq import Queue, SimpleWorker, job_lifecycle, utils, worker_registration
from rq.exceptions import AbandonedJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.timeouts import JobTimeoutException
from rq.worker import WorkerStatus  # noqa: F401  (the worker's states, for ModelWorker: re-exported)
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

SUPPORTED_RQ = (3, 0)  # major, minor: pyproject.toml says rq>=3.0,<3.1

# ModelWorker's base: RQ's worker that runs each job in its own process (no fork per job, so the model stays loaded).
Worker = SimpleWorker
WORKER_KEY_PREFIX = SimpleWorker.redis_worker_namespace_prefix  # a worker's hash: this + its name
JOB_STATUS_FIELD = "status"  # of a job's hash: RQ's own record of where the job is
ENDED = frozenset(
    status.value for status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
)


def rq_version() -> tuple[int, int]:
    major, minor = version("rq").split(".")[:2]
    return int(major), int(minor)


# -- a queue's bookkeeping ----------------------------------------------------------------------------------------
def bookkeeping_keys(queue: Queue) -> list[str]:
    """The keys RQ keeps for ``queue`` and never expires: its list, intermediate list, the set of queues and the job
    registries. They only hold ids."""
    return [
        queue.key,
        queue.intermediate_queue_key,
        Queue.redis_queues_keys,
        queue.started_job_registry.key,
        queue.finished_job_registry.key,
        queue.failed_job_registry.key,
        queue.canceled_job_registry.key,
        queue.deferred_job_registry.key,
        queue.scheduled_job_registry.key,
    ]


def open_job_ids(queue: Queue) -> list[str]:
    """The ids of the jobs of ``queue`` that are queued or running, in one round trip."""
    registry = queue.started_job_registry
    with queue.connection.pipeline(transaction=False) as pipe:
        pipe.lrange(queue.key, 0, -1)
        pipe.zrange(registry.key, 0, -1)
        queued, started = pipe.execute()
    return [raw.decode() for raw in queued] + [registry.parse_job_id(raw.decode()) for raw in started]


def running_count(queue: Queue) -> int:
    """How many jobs of ``queue`` RQ holds as started."""
    return queue.connection.zcard(queue.started_job_registry.key)


def ended_count(queue: Queue) -> int:
    """How many jobs of ``queue`` RQ holds as finished or failed (until their results expire)."""
    return queue.finished_job_registry.count + queue.failed_job_registry.count


def started_entries(queue: Queue) -> list[tuple[str, str]]:
    """(entry, job id) of every job of ``queue`` RQ holds as started; an entry names the job and its execution."""
    registry = queue.started_job_registry
    return [
        (entry, registry.parse_job_id(entry))
        for entry in (raw.decode() for raw in queue.connection.zrange(registry.key, 0, -1))
    ]


def drop_started_entry(connection, queue: Queue, entry: str) -> None:
    """``connection``: a Redis client or pipeline."""
    connection.zrem(queue.started_job_registry.key, entry)


def fail_abandoned(job: Job, reason: str, pipe) -> None:
    """Record ``job`` as failed (status, failed-job registry, a failure result with ``reason``) without a worker:
    the one it ran on is gone. Runs in ``pipe``."""
    job_lifecycle.record_job_failure(job, reason, pipe)


def failed_registry_key(queue: Queue) -> str:
    return queue.failed_job_registry.key


def was_abandoned(job: Job) -> bool:
    """RQ's maintenance found the job's worker gone and failed the job itself (nobody reaped it sooner)."""
    result = job.latest_result()
    return result is not None and AbandonedJobError.__name__ in (result.exc_string or "")


# -- a job's hash -------------------------------------------------------------------------------------------------
def stored_status(redis: Redis, job_id: str) -> str | None:
    """The status in the job's hash as Redis holds it now (None: no such job), whatever a ``Job`` object says."""
    raw = redis.hget(Job.key_for(job_id), JOB_STATUS_FIELD)
    return None if raw is None else raw.decode()


def still_open(redis: Redis, job_ids: list[str]) -> list[bool]:
    """For each job: whether it exists and has not ended (finished, failed, stopped or canceled), in one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(Job.key_for(job_id), JOB_STATUS_FIELD)
        statuses = pipe.execute()
    return [status is not None and status.decode() not in ENDED for status in statuses]


# -- workers ------------------------------------------------------------------------------------------------------
def registered_workers(queue: Queue) -> list[str]:
    """The names of the workers registered for ``queue`` (alive or not: see ``last_heartbeat``), sorted."""
    return sorted(key.removeprefix(WORKER_KEY_PREFIX) for key in worker_registration.get_keys(queue=queue))


def last_heartbeat(redis: Redis, worker_name: str) -> datetime | None:
    """When the worker last said it was alive (UTC); None when it never did or has registered its death."""
    beat, death = redis.hmget(WORKER_KEY_PREFIX + worker_name, "last_heartbeat", "death")
    if beat is None or death is not None:
        return None
    try:
        when = utils.utcparse(beat.decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def keep_registered(connection, worker_key: str, queue_names: Iterable[str], ttl: int) -> None:
    """Add the worker to RQ's registration sets again, and give the sets a TTL. RQ adds a worker to them once, at
    birth, and never expires them; re-added on every heartbeat, they expire only when no worker is left to refresh
    them. ``connection``: a Redis client or pipeline."""
    for key in [REDIS_WORKER_KEYS, *(WORKERS_BY_QUEUE_KEY % name for name in queue_names)]:
        connection.sadd(key, worker_key)
        connection.expire(key, ttl)


def forget_worker(redis: Redis, queue: Queue, worker_name: str) -> None:
    """Remove a dead worker's registration at once (instead of waiting for its key to expire)."""
    key = WORKER_KEY_PREFIX + worker_name
    with redis.pipeline() as pipe:
        pipe.srem(REDIS_WORKER_KEYS, key)
        pipe.srem(WORKERS_BY_QUEUE_KEY % queue.name, key)
        pipe.delete(key)
        pipe.execute()


# -- the worker loop ------------------------------------------------------------------------------------------------
# The steps of RQ's worker loop that ModelWorker overrides or calls, with their parameters as RQ declares them. RQ
# calls the overrides itself: a step renamed, or called with other arguments, would bypass them silently.
WORKER_HOOKS: dict[str, tuple[str, ...]] = {
    "work": (
        "burst",
        "logging_level",
        "date_format",
        "log_format",
        "max_jobs",
        "max_idle_time",
        "with_scheduler",
        "dequeue_strategy",
    ),
    "bootstrap": ("logging_level", "date_format", "log_format"),
    "teardown": (),
    "execute_job": ("job", "queue"),
    "perform_job": ("job", "queue", "execution"),
    "prepare_execution": ("job",),
    "prepare_job_execution": ("job", "remove_from_intermediate_queue"),
    "handle_execution_ended": ("job", "queue", "heartbeat_ttl"),
    "dequeue_job_and_maintain_ttl": ("timeout", "max_idle_time"),
    "run_maintenance_tasks": (),
    "check_for_suspension": ("burst",),
    "handle_job_success": ("job", "queue", "started_job_registry", "execution"),
    "handle_job_failure": ("job", "queue", "started_job_registry", "exc_string", "execution"),
    "handle_exception": ("job", "exc_info"),
    "heartbeat": ("timeout", "pipeline"),
    "set_state": ("state", "pipeline"),
    "register_birth": (),
    "register_death": (),
    "queue_names": (),
}
# What else of a worker ModelWorker uses: RQ's attributes (set on the class or in __init__).
WORKER_ATTRIBUTES = (
    "queue_class",
    "job_class",
    "serializer",
    "death_penalty_class",
    "worker_ttl",
    "log",
    "key",
    "name",
    "queues",
    "connection",
    "max_connection_wait_time",
    "_stop_requested",
)


def stop_requested(worker: SimpleWorker) -> bool:
    """The worker was asked to stop (SIGTERM, or work's max_jobs reached): its loop ends at its next turn."""
    return worker._stop_requested


def stop_at_next_turn(worker: SimpleWorker) -> None:
    worker._stop_requested = True


def dequeue_now(worker: SimpleWorker, queue: Queue) -> Job | None:
    """The next job of ``queue`` through RQ's own dequeue (moved to the intermediate list as RQ does), without
    waiting; None when the queue is empty."""
    result = worker.queue_class.dequeue_any(
        [queue],
        None,
        connection=worker.connection,
        job_class=worker.job_class,
        serializer=worker.serializer,
        death_penalty_class=worker.death_penalty_class,
    )
    return None if result is None else result[0]


def job_time_limit(worker: SimpleWorker, jobs: list[Job]):
    """A context that raises ``JobTimeoutException`` once the shortest time limit of ``jobs`` has passed (RQ's own
    death penalty: SIGALRM in the main thread)."""
    seconds = min(job.timeout or worker.queue_class.DEFAULT_TIMEOUT for job in jobs)
    return worker.death_penalty_class(seconds, JobTimeoutException, job_id=jobs[0].id)


# Everything above, as (where, the name, its parameters as RQ declares them, or None for a value): checked against the
# installed RQ (on an instance where RQ sets the attribute in __init__).
RELIED_ON: list[tuple[object, str, tuple[str, ...] | None]] = [
    (Queue, "dequeue_any", ("queues", "timeout", "connection", "job_class", "serializer", "death_penalty_class")),
    (Queue, "DEFAULT_TIMEOUT", None),
    (Queue, "redis_queues_keys", None),
    *(
        (Queue, name, None)
        for name in (
            "key",
            "intermediate_queue_key",
            "started_job_registry",
            "finished_job_registry",
            "failed_job_registry",
            "canceled_job_registry",
            "deferred_job_registry",
            "scheduled_job_registry",
        )
    ),
    (StartedJobRegistry, "parse_job_id", ("entry",)),
    (StartedJobRegistry, "key", None),
    (StartedJobRegistry, "count", None),
    (Job, "key_for", ("job_id",)),
    (Job, "latest_result", ("timeout",)),
    (Job, "should_retry", None),
    (SimpleWorker, "redis_worker_namespace_prefix", None),
    *((SimpleWorker, name, params) for name, params in WORKER_HOOKS.items()),
    *((SimpleWorker, name, None) for name in WORKER_ATTRIBUTES),
    (SimpleWorker.death_penalty_class, "__init__", ("timeout", "exception", "kwargs")),
    (job_lifecycle, "record_job_failure", ("job", "exc_string", "pipeline")),
    (worker_registration, "get_keys", ("queue", "connection")),
    (worker_registration, "REDIS_WORKER_KEYS", None),
    (worker_registration, "WORKERS_BY_QUEUE_KEY", None),
    (utils, "utcparse", ("string",)),
    (AbandonedJobError, "__name__", None),
]
