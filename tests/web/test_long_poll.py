"""Long polling (GET /api/v1/jobs/{id}?wait=S) against a real Redis and the real worker class.

The requests that must wait are shown to be blocked in Redis (CLIENT LIST: BLMOVE with the blocked flag) before the
job ends, so each test checks that the waiting request returned because the job ended: before ``wait`` ran out,
with the final state. No test asserts how fast anything is.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from fastapi.testclient import TestClient
from service_support import make_settings, wait_for_job

from simpsonize.queue import keys
from simpsonize.queue.jobstore import JobStore
from simpsonize.queue.longpoll import CLIENT_NAME
from simpsonize.web.main import create_app

WAIT = 30  # seconds each waiting request may wait; the tests below return long before, or fail


def submit(client, data: bytes) -> str:
    response = client.post("/api/v1/jobs", files={"file": ("photo.jpg", data, "image/jpeg")})
    assert response.status_code == 202, response.text
    return response.json()["id"]


class Waiter(threading.Thread):
    """One ``GET ...?wait=WAIT`` in a thread of its own; ``response`` and ``elapsed`` once it returned."""

    def __init__(self, client, job_id: str) -> None:
        super().__init__(daemon=True)
        self.client, self.job_id = client, job_id
        self.response = None
        self.elapsed: float | None = None

    def run(self) -> None:
        started = time.monotonic()
        self.response = self.client.get(f"/api/v1/jobs/{self.job_id}", params={"wait": WAIT})
        self.elapsed = time.monotonic() - started

    def result(self) -> tuple[int, dict, float]:
        self.join(WAIT + 30)
        assert self.response is not None, "the waiting request never returned"
        return self.response.status_code, self.response.json(), self.elapsed


def blocked_in_redis(redis_client) -> int:
    """Long polls blocked in Redis right now (tests run one at a time, so these are the running test's)."""
    return sum(
        1
        for c in redis_client.client_list()
        if c.get("name") == CLIENT_NAME and c.get("cmd") == "blmove" and "b" in c.get("flags", "")
    )


def wait_until_blocked(redis_client, count: int, waiters: list[Waiter], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while blocked_in_redis(redis_client) < count:
        returned = [w for w in waiters if not w.is_alive()]
        assert not returned, f"a waiting request returned before the job ended: {returned[0].response.json()}"
        assert time.monotonic() < deadline, "the long polls never blocked in Redis"
        time.sleep(0.05)


@pytest.fixture()
def quiet_app(redis_url, tiny_weights):
    """An app on a queue of its own that no worker serves until the test runs one."""
    settings = make_settings(redis_url, tiny_weights)
    with TestClient(create_app(settings)) as client:
        yield settings, client


@pytest.fixture()
def in_process_worker():
    """Runs ``ModelWorker`` (the class `simpsonize worker` runs) in this process, in burst mode, and puts back what
    it changes: the signal handlers."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def run(settings, store: JobStore) -> None:
        from simpsonize.worker.jobs import ModelHolder
        from simpsonize.worker.model_worker import ModelWorker

        holder = ModelHolder()
        holder.load(settings.weights, device="cpu", num_threads=1)
        worker = ModelWorker([store.queue], connection=store.redis, model=holder)
        worker.key_prefix = settings.key_prefix
        worker.work(burst=True, logging_level="WARNING")

    yield run
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_waiting_requests_return_when_their_job_ends(
    quiet_app, in_process_worker, redis_client, astronaut_jpeg, coffee_jpeg
):
    settings, client = quiet_app
    store = JobStore(settings, redis_client)
    face, no_face = submit(client, astronaut_jpeg), submit(client, coffee_jpeg)
    # two requests on the same job (both must wake), one on a job that will fail
    waiters = [Waiter(client, face), Waiter(client, face), Waiter(client, no_face)]
    for waiter in waiters:
        waiter.start()
    wait_until_blocked(redis_client, len(waiters), waiters)
    assert all(store.view(job_id).status == "queued" for job_id in (face, no_face))

    in_process_worker(settings, store)  # takes both jobs, then quits

    for waiter in waiters[:2]:
        status, body, elapsed = waiter.result()
        assert status == 200 and body["status"] == "finished", body
        assert elapsed < WAIT  # woken by the job's end, not by the time running out
        assert body["face"]["face"]["box"] and body["timings"]["generate"] >= 0
    status, body, elapsed = waiters[2].result()
    assert status == 200 and body["status"] == "failed" and body["error"].startswith("No face found"), body
    assert elapsed < WAIT
    done = keys.done_key(settings.key_prefix, face)
    assert redis_client.lrange(done, 0, -1) == [b"1"]  # woke everyone, consumed nothing
    assert 0 < redis_client.ttl(done) <= keys.DONE_TTL


def test_a_waiting_request_answers_404_when_its_job_is_deleted(quiet_app, redis_client, astronaut_jpeg):
    settings, client = quiet_app
    job_id = submit(client, astronaut_jpeg)
    waiter = Waiter(client, job_id)
    waiter.start()
    wait_until_blocked(redis_client, 1, [waiter])
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    status, body, elapsed = waiter.result()
    assert status == 404 and "upload the photo again" in body["detail"]
    assert elapsed < WAIT


def test_the_wait_runs_out_with_the_current_state(quiet_app, astronaut_jpeg):
    _, client = quiet_app
    job_id = submit(client, astronaut_jpeg)
    started = time.monotonic()
    response = client.get(f"/api/v1/jobs/{job_id}", params={"wait": 0.5})
    assert response.status_code == 200
    assert response.json()["status"] == "queued" and response.json()["position"] == 1
    assert time.monotonic() - started >= 0.5  # it did wait, since nothing ended the job


def test_a_finished_job_and_an_unknown_one_answer_at_once(client, astronaut_jpeg):
    job_id = submit(client, astronaut_jpeg)
    assert wait_for_job(client, job_id)["status"] == "finished"
    for path, code in [
        (f"/api/v1/jobs/{job_id}", 200),
        ("/api/v1/jobs/" + "A" * 22, 404),
        ("/api/v1/jobs/not-a-job-id", 404),
    ]:
        started = time.monotonic()
        response = client.get(path, params={"wait": WAIT})
        assert response.status_code == code, response.text
        assert time.monotonic() - started < WAIT / 2  # answered without waiting for the time to run out
    assert client.get(f"/api/v1/jobs/{job_id}", params={"wait": WAIT}).json()["status"] == "finished"


@pytest.mark.parametrize("wait", ["31", "-1", "soon", "nan"])
def test_a_wait_out_of_range_is_422_with_a_sentence(client, wait):
    response = client.get("/api/v1/jobs/" + "A" * 22, params={"wait": wait})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.endswith(".") and "wait" in detail


def test_the_wait_parameter_is_documented(client):
    operation = client.get("/openapi.json").json()["paths"]["/api/v1/jobs/{job_id}"]["get"]
    (wait,) = [p for p in operation["parameters"] if p["name"] == "wait"]
    assert wait["in"] == "query" and not wait.get("required", False)
    assert wait["schema"]["anyOf"][0]["maximum"] == 30 and wait["schema"]["anyOf"][0]["minimum"] == 0
    assert "as soon as" in wait["description"]
