"""A job's life through the API with the real worker class run in this process: seen `started`, deleted while
started, stopped by the job timeout, expired in the queue. (A job whose input is gone: tests/web/test_edge_uploads.)

The worker runs in burst mode in the test's main thread (RQ's job timeout is a SIGALRM there); the job function's
model call is replaced where a test must act while the job runs, and the API is asked from inside it.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from rq.job import Job
from service_support import make_settings

from simpsonize.queue import keys
from simpsonize.queue.jobstore import SERIALIZER, JobStore
from simpsonize.web.main import create_app

NOT_FOUND_START = "No such job"


@pytest.fixture()
def loaded_model(tiny_weights):
    """A worker's model, loaded as `simpsonize worker` does."""
    from simpsonize.worker.jobs import ModelHolder

    holder = ModelHolder()
    holder.load(tiny_weights, device="cpu")
    return holder


def run_burst(store: JobStore, model) -> None:
    from simpsonize.worker.model_worker import ModelWorker

    worker = ModelWorker([store.queue], connection=store.redis, model=model)
    worker.key_prefix = store.prefix
    worker.work(burst=True, logging_level="WARNING")


def upload(client: TestClient, photo: bytes) -> str:
    response = client.post("/api/v1/jobs", files={"file": ("me.jpg", photo, "image/jpeg")})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_a_running_job_is_started_and_delete_forgets_it(
    redis_url, redis_client, tiny_weights, astronaut_jpeg, loaded_model, restore_signals, monkeypatch
):
    from simpsonize.worker import jobs

    settings = make_settings(redis_url, tiny_weights)
    prefix = settings.key_prefix
    real = jobs.simpsonize_bytes
    seen: dict = {}
    with TestClient(create_app(settings)) as client:
        job_id = upload(client, astronaut_jpeg)

        def while_running(data, simpsonizer=None):
            seen["state"] = client.get(f"/api/v1/jobs/{job_id}").json()
            seen["result"] = client.get(f"/api/v1/jobs/{job_id}/result")
            seen["delete"] = client.delete(f"/api/v1/jobs/{job_id}").status_code
            seen["after_delete"] = client.get(f"/api/v1/jobs/{job_id}")
            return real(data, simpsonizer)  # the photo is still finished: its result must not be kept

        monkeypatch.setattr(jobs, "simpsonize_bytes", while_running)
        run_burst(JobStore(settings, redis_client), loaded_model)

        state = seen["state"]
        assert state["status"] == "started", state
        assert state["started_at"] and "position" not in state and "error" not in state
        assert seen["result"].status_code == 409 and "started" in seen["result"].json()["detail"]
        assert seen["delete"] == 204
        assert seen["after_delete"].status_code == 404
        assert seen["after_delete"].json()["detail"].startswith(NOT_FOUND_START)

        # The job ran to its end and kept nothing: no result, no input; the API says 404 for all of it.
        assert Job.fetch(job_id, connection=redis_client, serializer=SERIALIZER).get_status() == "finished"
        assert not redis_client.exists(keys.result_key(prefix, job_id))
        assert not redis_client.exists(keys.input_key(prefix, job_id))
        for path in ("", "/result", "/input"):
            assert client.get(f"/api/v1/jobs/{job_id}{path}").status_code == 404, path
        # RQ keeps its (photo-free) record of the finished job for result_ttl: the tombstone outlives it, so the job
        # never reappears, and a second DELETE is 404 like every GET (it was 204) and drops that record.
        assert redis_client.ttl(keys.deleted_key(prefix, job_id)) >= redis_client.ttl(f"rq:job:{job_id}") > 0
        assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 404
        assert not redis_client.exists(f"rq:job:{job_id}")


def test_a_job_over_the_time_limit_fails_with_a_sentence_and_the_worker_goes_on(
    redis_url, redis_client, tiny_weights, astronaut_jpeg, loaded_model, restore_signals, monkeypatch
):
    from simpsonize.worker import jobs

    # 3 s: the photo after the hung one must fit in it on a loaded 2-core machine
    settings = make_settings(redis_url, tiny_weights, job_timeout=3)
    prefix = settings.key_prefix
    real = jobs.simpsonize_bytes
    calls = []

    def first_one_hangs(data, simpsonizer=None):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(60)  # interrupted by RQ's SIGALRM after job_timeout
        return real(data, simpsonizer)

    monkeypatch.setattr(jobs, "simpsonize_bytes", first_one_hangs)
    with TestClient(create_app(settings)) as client:
        slow, next_one = upload(client, astronaut_jpeg), upload(client, astronaut_jpeg)
        run_burst(JobStore(settings, redis_client), loaded_model)

        state = client.get(f"/api/v1/jobs/{slow}").json()
        assert state["status"] == "failed"
        assert state["error"] == "Simpsonizing took longer than 3 seconds. Please try again later."
        assert not redis_client.exists(keys.input_key(prefix, slow))  # dropped whatever happened
        result = client.get(f"/api/v1/jobs/{slow}/result")
        assert result.status_code == 409 and "took longer than" in result.json()["detail"]
        # the worker survived its alarm and ran the next photo
        assert calls == [1, 1]
        assert client.get(f"/api/v1/jobs/{next_one}").json()["status"] == "finished"


def test_a_job_left_in_the_queue_past_its_ttl_is_gone_and_skipped(
    redis_url, redis_client, tiny_weights, astronaut_jpeg, loaded_model, restore_signals, monkeypatch
):
    from simpsonize.worker import jobs

    settings = make_settings(redis_url, tiny_weights, queue_ttl=1)
    prefix = settings.key_prefix
    ran = []
    monkeypatch.setattr(jobs, "simpsonize_bytes", lambda data, simpsonizer=None: ran.append(1))
    with TestClient(create_app(settings)) as client:
        job_id = upload(client, astronaut_jpeg)
        assert client.get(f"/api/v1/jobs/{job_id}").json()["status"] == "queued"
        assert 0 < redis_client.ttl(f"rq:job:{job_id}") <= settings.queue_ttl
        # the input outlives the queue TTL (a job may start just before it) but not for long
        assert settings.queue_ttl < redis_client.ttl(keys.input_key(prefix, job_id)) <= settings.input_ttl

        deadline = time.monotonic() + 30
        while redis_client.exists(f"rq:job:{job_id}"):
            assert time.monotonic() < deadline, "the queued job did not expire"
            time.sleep(0.1)
        response = client.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 404 and response.json()["detail"].startswith(NOT_FOUND_START)
        assert client.get(f"/api/v1/jobs/{job_id}/result").status_code == 404

        store = JobStore(settings, redis_client)
        run_burst(store, loaded_model)  # finds only the expired id in the queue: skips it without running anything
        assert ran == []
        assert store.queue.count == 0
        # RQ left the expired id in its intermediate list (until its 10-minute maintenance): that key has a TTL too
        names = [k.decode() for k in redis_client.scan_iter(match=f"rq:*{settings.queue_name}*")]
        assert f"rq:queue:{settings.queue_name}:intermediate" in names
        assert [n for n in names if redis_client.ttl(n) < 0] == []
        assert not redis_client.exists(keys.result_key(prefix, job_id))
        assert client.get(f"/api/v1/jobs/{job_id}").status_code == 404
