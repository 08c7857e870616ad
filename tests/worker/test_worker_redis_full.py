"""A full Redis (maxmemory, noeviction: it refuses writes) slows a worker down; it never ends the worker process.

A real redis-server with a small maxmemory, made fuller than its maxmemory at a chosen moment of a job; the
worker runs in this process (burst mode), so a worker that would die raises out of ``work`` here.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from service_support import make_settings, small_redis_server

from simpsonize.queue import capacity, keys, metrics
from simpsonize.queue.jobstore import JobStore, connect

MAXMEMORY = 6 * 1024 * 1024
BIG = 800_000  # an upload or a result this big, when freed, brings Redis back under maxmemory by 500 KB


@pytest.fixture(scope="module")
def small_redis():
    with small_redis_server(MAXMEMORY) as url:
        yield url


def fill(redis, over: int = 300_000) -> None:
    """Make Redis ``over`` bytes fuller than its maxmemory, as if filled by other jobs: it then refuses every write
    that needs memory. (Lowering maxmemory is exact; filler keys would overshoot by whatever the client buffers held
    at that moment, which Redis frees again a moment later.)"""
    used = settled_used_memory(redis)
    redis.config_set("maxmemory", used - over)


def settled_used_memory(redis) -> int:
    """used_memory once the query buffers of big writes just made are freed (Redis does that within about a
    second): measured at once, it would count them, and Redis would soon be under maxmemory again."""
    used = int(redis.info("memory")["used_memory"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = int(redis.info("memory")["used_memory"])
        if now > used - 16_000:
            return now
        used = now
    return used


def unfill(redis) -> None:
    redis.config_set("maxmemory", MAXMEMORY)


@pytest.fixture()
def setup(small_redis, tiny_weights, monkeypatch, restore_signals):
    """A store on the small Redis, and a model that returns a result at once."""
    from simpsonize.worker import jobs

    redis = connect(small_redis)
    redis.flushall()
    store = JobStore(make_settings(small_redis, tiny_weights), redis)

    def output(data, simpsonizer=None):
        return jobs.JobOutput(
            image_png=os.urandom(BIG),
            face_jpeg=os.urandom(12_000),
            meta={"timings": {"detect": 0.01, "generate": 0.01, "encode": 0.01}},
        )

    monkeypatch.setattr(jobs, "simpsonize_bytes", output)
    yield store
    unfill(redis)
    redis.flushall()
    redis.close()


class StubModel:
    """Stands in for the Simpsonizer (``simpsonize_bytes`` is replaced): only its device and precision are read."""

    device = "cpu"
    precision = "fp32"


def work(store) -> None:
    from simpsonize.worker.jobs import ModelHolder
    from simpsonize.worker.model_worker import ModelWorker

    worker = ModelWorker([store.queue], connection=store.redis, model=ModelHolder(StubModel()))
    worker.key_prefix = store.prefix
    worker.heartbeat_interval = 1
    worker.work(burst=True, logging_level="WARNING")  # raises if the worker would have died


def failures_full(store) -> float:
    raw = store.redis.hget(metrics.metrics_key(store.prefix, store.queue.name), "failed:full")
    return float(raw or 0)


def test_a_result_that_a_full_redis_refuses_fails_its_job_as_full_and_the_worker_goes_on(setup, monkeypatch):
    """The model fills Redis while it works: storing the result is refused, retried with backoff, and the job fails
    with the 'full' sentence (its input deleted first, so that the failure itself is recorded). Once there is room
    again, the next job finishes, in the same worker."""
    from simpsonize.worker import jobs

    store = setup
    plain = jobs.simpsonize_bytes

    def filling(data, simpsonizer=None):
        fill(store.redis)
        return plain(data, simpsonizer)

    monkeypatch.setattr(jobs, "simpsonize_bytes", filling)
    first = store.submit(os.urandom(BIG))  # deleting it makes room for the failure's record
    work(store)
    view = store.view(first)
    assert view.status == "failed" and view.error == capacity.FULL_FAILURE
    assert failures_full(store) == 1
    assert not store.redis.exists(keys.input_key(store.prefix, first), keys.result_key(store.prefix, first))

    unfill(store.redis)
    monkeypatch.setattr(jobs, "simpsonize_bytes", plain)
    second = store.submit(os.urandom(300_000))
    work(store)
    assert store.view(second).status == "finished"
    assert len(store.image(second, "image")) == BIG


def test_when_rq_cannot_record_a_success_the_job_fails_as_full_instead_of_staying_started(setup, monkeypatch):
    """Redis fills between the job function's return and RQ's record of its success: the record is retried, then the
    job ends as failed with the sentence, its stored result dropped. The worker's own end (its death notice) is
    refused too, and the worker still returns normally."""
    from simpsonize.worker import jobs

    store = setup
    plain = jobs.process_job

    def then_fill(*args, **kwargs):
        result = plain(*args, **kwargs)
        fill(store.redis)
        return result

    monkeypatch.setattr(jobs, "process_job", then_fill)  # RQ imports the job function by name when it runs it
    job_id = store.submit(os.urandom(100_000))
    work(store)
    view = store.view(job_id)
    assert view.status == "failed" and view.error == capacity.FULL_FAILURE
    assert not store.redis.exists(keys.result_key(store.prefix, job_id))


def test_a_worker_waits_for_room_instead_of_dying_when_redis_is_full_before_a_job(setup):
    """Redis is over maxmemory before the worker starts: it cannot register, take or start a job. It waits; once
    room comes back (maxmemory raised again a few seconds later), it runs the queued job."""
    store = setup
    job_id = store.submit(os.urandom(100_000))
    fill(store.redis)
    timer = threading.Timer(3.0, unfill, args=(store.redis,))
    timer.start()
    try:
        work(store)
    finally:
        timer.cancel()
    assert store.view(job_id).status == "finished"
