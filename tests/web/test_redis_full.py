"""A full Redis slows the service down; it does not take it down (issue 31).

Against a real redis-server with a small maxmemory and noeviction (what compose runs as the external Redis, and
`serve` embeds), a real worker subprocess and the app served by uvicorn, hit by a burst larger than fits.
"""

from __future__ import annotations

import re
import sys
import threading
import time

import httpx
import pytest
from service_support import (
    child_env,
    make_settings,
    served_in_thread,
    small_redis_server,
    start_worker,
    stop,
    wait_for_worker,
)

from simpsonize.queue.capacity import BUSY, FULL_READINESS, Admission, JobFootprint, MemoryGauge
from simpsonize.queue.jobstore import JobStore, connect

MAXMEMORY = 4 * 1024 * 1024
UPLOADS, CLIENTS = 16, 4


@pytest.fixture(scope="module")
def small_redis():
    with small_redis_server(MAXMEMORY) as url:
        yield url


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert match, f"{name} is not in /metrics"
    return float(match.group(1))


def wait_for_end(http: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 240
    while (body := http.get(f"/api/v1/jobs/{job_id}", params={"wait": 30}).json())["status"] not in (
        "finished",
        "failed",
    ):
        assert time.monotonic() < deadline, f"job {job_id} did not end"
    return body


def test_a_burst_larger_than_redis_is_refused_with_503_and_every_accepted_job_ends(
    small_redis, tiny_weights, astronaut_jpeg
):
    settings = make_settings(small_redis, tiny_weights, max_queue=50)
    store = JobStore(settings, connect(small_redis))
    worker = start_worker(settings, tiny_weights)
    from simpsonize.web.main import create_app

    try:
        wait_for_worker(store, worker)
        with served_in_thread(create_app(settings)) as base:
            accepted, refusals, ends, lock = [], [], {}, threading.Lock()
            left = iter(range(UPLOADS))

            def client() -> None:
                with httpx.Client(base_url=base, timeout=60) as http:
                    while next(left, None) is not None:
                        response = http.post("/api/v1/jobs", files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")})
                        if response.status_code != 202:
                            with lock:
                                refusals.append(response)
                            continue
                        job_id = response.json()["id"]
                        with lock:
                            accepted.append(job_id)
                        body = wait_for_end(http, job_id)
                        with lock:
                            ends[job_id] = body

            threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(600)

            # Every accepted job ended: finished, or failed with a sentence. None is left without a final state.
            assert accepted and sorted(ends) == sorted(accepted)
            finished = [j for j, body in ends.items() if body["status"] == "finished"]
            failed = [body for body in ends.values() if body["status"] == "failed"]
            assert len(accepted) == len(finished) + len(failed)
            assert all(body["error"] and body["error"].endswith(".") for body in failed)
            # The rest was refused before Redis was full: 503, a minute to wait, a sentence.
            assert refusals, "the burst fitted: the test would prove nothing"
            assert {r.status_code for r in refusals} == {503}
            assert {r.headers["Retry-After"] for r in refusals} == {"60"}
            assert {r.json()["detail"] for r in refusals} == {BUSY}
            assert worker.poll() is None  # no worker process exited

            with httpx.Client(base_url=base, timeout=30) as http:
                # The burst was refused for the jobs in flight; with none left, the results kept fill Redis: one
                # upload at a time until even one job alone no longer fits.
                for _ in range(20):
                    response = http.post("/api/v1/jobs", files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")})
                    if response.status_code == 503:
                        refusals.append(response)
                        break
                    assert response.status_code == 202
                    finished.append(wait_for_end(http, response.json()["id"])["id"])
                assert response.status_code == 503 and response.headers["Retry-After"] == "60"
                ready = http.get("/readyz")
                assert ready.status_code == 503 and ready.json()["detail"] == FULL_READINESS
                text = http.get("/metrics").text
                assert metric(text, "simpsonize_uploads_refused_memory_total") == len(refusals)
                assert metric(text, "simpsonize_redis_max_memory_bytes") == MAXMEMORY
                assert 0 < metric(text, "simpsonize_redis_used_memory_bytes") < MAXMEMORY
                assert metric(text, 'simpsonize_jobs_failed_total{reason="full"}') == len(
                    [b for b in failed if "storage was full" in b["error"]]
                )

                # Room again once the owners delete their jobs: a new upload is accepted and finishes.
                for job_id in finished:
                    assert http.delete(f"/api/v1/jobs/{job_id}").status_code == 204
                time.sleep(1.1)
                assert http.get("/readyz").status_code == 200
                response = http.post("/api/v1/jobs", files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")})
                assert response.status_code == 202, response.text
                assert wait_for_end(http, response.json()["id"])["status"] == "finished"
        assert worker.poll() is None
    finally:
        stop(worker)
        store.redis.flushall()


def test_admission_leaves_room_for_every_job_already_accepted(small_redis):
    """The mark moves with the jobs in flight: each queued or running job reserves what it still needs to finish,
    which grows with its upload (the composite is the photo with the drawing in it)."""
    from rq import Queue

    from simpsonize.queue import keys

    redis = connect(small_redis)
    redis.flushall()
    queue = Queue("admission-test", connection=redis)
    footprint = JobFootprint(upload=1000, fixed=50_000, per_upload_byte=2.0)
    admission = Admission(queue, "p", footprint=footprint, gauge=MemoryGauge(redis, cache_s=600))  # one reading
    fits, reading = admission.room(1000)
    assert fits and reading.maxmemory == MAXMEMORY
    room = MAXMEMORY * 0.95 - reading.used - (1000 + footprint.to_finish(1000))  # left beside one more upload
    # queued jobs with 10 KB uploads (each needs 70 KB more), as many as fit beside it, then one started job more
    jobs = int(room // footprint.to_finish(10_000))
    redis.rpush(queue.key, *[f"job{i}" for i in range(jobs)])
    redis.mset({keys.input_key("p", f"job{i}"): b"x" * 10_000 for i in range(jobs)})
    assert admission.uploads_in_flight() == [10_000] * jobs
    assert admission.room(1000)[0]
    redis.zadd(queue.started_job_registry.key, {"started:execution": 0})  # RQ's entry: job id and execution id
    redis.set(keys.input_key("p", "started"), b"x" * 10_000)
    assert not admission.room(1000)[0]
    redis.flushall()


def wait_until_full(watch) -> None:
    deadline = time.monotonic() + 10
    while watch.current() != "full":
        watch.check()
        assert time.monotonic() < deadline, "RedisWatch did not see a full Redis"
        time.sleep(0.05)


def stop_code(pool) -> int:
    """Start the WorkerPool ``pool`` and check it until it says serve must stop; that exit code."""
    pool.start()
    try:
        deadline = time.monotonic() + 20
        while (code := pool.check()) is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return code
    finally:
        pool.stop(5)


def test_redis_watch_and_the_worker_pool_keep_serve_up_while_redis_is_full(small_redis, monkeypatch):
    """A worker that keeps exiting while Redis is full is restarted for as long as it takes, instead of stopping serve
    after MAX_QUICK_CRASHES; bad weights or settings (exit 2) still stop it."""
    from rq import Queue

    from simpsonize.serve.supervision import RedisWatch, WorkerPool

    redis = connect(small_redis)
    redis.flushall()
    watch = RedisWatch(Admission(Queue("watch-test", connection=redis), "p"))
    monkeypatch.setattr(WorkerPool, "RESTART_DELAY", 0.01)
    monkeypatch.setattr(WorkerPool, "MAX_QUICK_CRASHES", 2)
    crashing = [sys.executable, "-c", "raise SystemExit(1)"]
    try:
        used = int(redis.info("memory")["used_memory"])
        redis.config_set("maxmemory", used - 100_000)  # full
        wait_until_full(watch)

        pool = WorkerPool([crashing], child_env(), name_prefix="full", redis_trouble=watch.current)
        pool.start()
        try:
            deadline = time.monotonic() + 20
            while pool.generation[0] < 5:  # far more exits than MAX_QUICK_CRASHES
                assert pool.check() is None  # serve stays up
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            pool.stop(5)

        # With room again (and the trouble older than WINDOW), the same crash loop stops serve, as before.
        redis.config_set("maxmemory", MAXMEMORY)
        monkeypatch.setattr(RedisWatch, "WINDOW", 0.0)
        watch.check()
        assert stop_code(WorkerPool([crashing], child_env(), name_prefix="crash", redis_trouble=watch.current)) == 1

        # Exit code 2 stops serve even while Redis is full.
        redis.config_set("maxmemory", used - 100_000)
        monkeypatch.setattr(RedisWatch, "WINDOW", 10.0)
        wait_until_full(watch)
        assert (
            stop_code(
                WorkerPool([[sys.executable, "-c", "raise SystemExit(2)"]], child_env(), redis_trouble=watch.current)
            )
            == 2
        )
    finally:
        redis.config_set("maxmemory", MAXMEMORY)
        watch.close()
