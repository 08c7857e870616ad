"""GET /metrics: request counters by route template, the workers' job counters and stage histograms (through Redis),
queue depth and live workers, who may scrape, and the same numbers from a whole `simpsonize serve`.

Everything against the session's real Redis and real `simpsonize worker` processes; scrapes are parsed with
prometheus_client's own parser.
"""

from __future__ import annotations

import io
import signal
import time
import uuid
from contextlib import contextmanager

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from service_support import make_settings, serving, start_worker, stop, wait_for_job, wait_for_worker

from simpsonize.queue import keys, metrics

HEARTBEAT = 1  # seconds: a worker counts as live while its heartbeat is <= 2 s old
WORKER_ENV = {"SIMPSONIZE_WORKER_HEARTBEAT": str(HEARTBEAT)}  # start_worker's **env: the workers' heartbeat
LOOPBACK = ("127.0.0.1", 50000)  # the TestClient's peer address (its default, "testclient", is no address)
STAGES = ("detect", "generate", "encode")


# -- helpers ---------------------------------------------------------------------------------------------------------


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(client) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples, name: str, **labels) -> float:
    """A sample's value; 0 for a labelled counter not incremented yet (prometheus_client omits those)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before, after, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.1)


def submit(client, photo: bytes) -> str:
    response = client.post("/api/v1/jobs", files={"file": ("a.jpg", photo, "image/jpeg")})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def metrics_client(settings, **kwargs):
    from fastapi.testclient import TestClient

    from simpsonize.web.main import create_app

    return TestClient(create_app(settings), client=kwargs.pop("client", LOOPBACK), **kwargs)


@contextmanager
def worker_and_client(redis_url, weights, name: str):
    """A queue of its own, served by one real worker (1 s heartbeat) once it has registered, and a client scraping
    from loopback; yields (settings, the worker process, the client). The worker is stopped (thawed first)."""
    settings = make_settings(redis_url, weights, worker_heartbeat=HEARTBEAT)
    process = start_worker(settings, weights, name, **WORKER_ENV)
    try:
        with metrics_client(settings) as client:
            wait_for_worker(client.app.state.store, process)
            yield settings, process, client
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
        stop(process)


@pytest.fixture(scope="module")
def service(redis_url, tiny_weights):
    """``worker_and_client``'s client, with its worker, the worker's name and the settings as attributes."""
    name = f"metrics-{uuid.uuid4().hex[:6]}"
    with worker_and_client(redis_url, tiny_weights, name) as (settings, process, client):
        client.worker, client.worker_name, client.settings = process, name, settings
        yield client


@pytest.fixture()
def idle(redis_url, tiny_weights):
    """A queue no worker serves."""
    settings = make_settings(redis_url, tiny_weights)
    with metrics_client(settings) as client:
        yield client
        for job_id in client.app.state.store.queue.get_job_ids():
            client.app.state.store.delete(job_id)


# -- requests --------------------------------------------------------------------------------------------------------


def test_requests_are_counted_by_method_route_template_and_status(idle, astronaut_jpeg):
    unknown = keys.new_job_id()
    before = scrape(idle)
    job_id = submit(idle, astronaut_jpeg)
    for _ in range(3):
        assert idle.get(f"/api/v1/jobs/{job_id}").status_code == 200
    assert idle.get(f"/api/v1/jobs/{unknown}").status_code == 404
    assert idle.get(f"/api/v1/jobs/{job_id}/result").status_code == 409
    assert idle.get("/healthz").status_code == 200
    assert idle.get("/static/app.js").status_code == 200
    assert idle.get("/no/such/page").status_code == 404
    assert (
        idle.post(
            "/api/v1/jobs",
            files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")},
            headers={"Sec-Fetch-Site": "cross-site"},
        ).status_code
        == 403
    )  # refused before routing
    assert idle.request("BREW", "/healthz").status_code == 405
    after = scrape(idle)

    def requests(method, route, status):
        return moved(before, after, "simpsonize_http_requests_total", method=method, route=route, status=status)

    assert requests("POST", "/api/v1/jobs", "202") == 1
    assert requests("GET", "/api/v1/jobs/{job_id}", "200") == 3
    assert requests("GET", "/api/v1/jobs/{job_id}", "404") == 1
    assert requests("GET", "/api/v1/jobs/{job_id}/result", "409") == 1
    assert requests("GET", "/healthz", "200") == 1
    assert requests("GET", "/static/{path}", "200") == 1
    assert requests("GET", "unmatched", "404") == 1
    assert requests("POST", "/api/v1/jobs", "403") == 1
    assert requests("other", "/healthz", "405") == 1  # made-up methods are one label value, not one each
    assert (
        moved(
            before, after, "simpsonize_http_request_duration_seconds_count", method="GET", route="/api/v1/jobs/{job_id}"
        )
        == 4
    )
    assert (
        moved(
            before, after, "simpsonize_http_request_duration_seconds_sum", method="GET", route="/api/v1/jobs/{job_id}"
        )
        > 0
    )
    # Job ids are bearer tokens: never in a label.
    text = idle.get("/metrics").text
    assert job_id not in text and unknown not in text and "/no/such/page" not in text


def test_a_long_poll_is_timed_by_how_long_it_waited(idle, astronaut_jpeg):
    job_id = submit(idle, astronaut_jpeg)
    before = scrape(idle)
    assert idle.get(f"/api/v1/jobs/{job_id}?wait=1").json()["status"] == "queued"
    after = scrape(idle)
    route = {"method": "GET", "route": "/api/v1/jobs/{job_id}"}
    assert moved(before, after, "simpsonize_http_request_duration_seconds_sum", **route) >= 1.0
    assert moved(before, after, "simpsonize_http_request_duration_seconds_bucket", le="0.5", **route) == 0
    assert moved(before, after, "simpsonize_http_request_duration_seconds_bucket", le="+Inf", **route) == 1


# -- queue and workers -----------------------------------------------------------------------------------------------


def test_queue_depth_counts_the_jobs_waiting(idle, astronaut_jpeg):
    samples = scrape(idle)
    assert value(samples, "simpsonize_redis_up") == 1
    assert value(samples, "simpsonize_queue_depth") == 0
    assert value(samples, "simpsonize_workers_live") == 0  # no worker serves this queue
    ids = [submit(idle, astronaut_jpeg) for _ in range(3)]
    assert value(scrape(idle), "simpsonize_queue_depth") == 3
    assert idle.delete(f"/api/v1/jobs/{ids[0]}").status_code == 204
    samples = scrape(idle)
    assert value(samples, "simpsonize_queue_depth") == 2
    assert value(samples, "simpsonize_jobs_in_progress") == 0


def test_live_workers_follow_the_heartbeat(service):
    store = service.app.state.store
    assert value(scrape(service), "simpsonize_workers_live") == store.live_workers() == 1
    service.worker.send_signal(signal.SIGSTOP)  # frozen: still registered in RQ, but its heartbeat stops
    try:
        wait_until(
            lambda: value(scrape(service), "simpsonize_workers_live") == 0,
            4 * HEARTBEAT + 10,
            "frozen worker no longer live",
        )
        assert store.redis.exists(f"rq:worker:{service.worker_name}")
    finally:
        service.worker.send_signal(signal.SIGCONT)
    wait_until(lambda: value(scrape(service), "simpsonize_workers_live") == 1, 4 * HEARTBEAT + 10, "worker live again")


# -- jobs ------------------------------------------------------------------------------------------------------------


def test_a_finished_job_moves_the_job_counters_and_each_stage_histogram(service, astronaut_jpeg):
    before = scrape(service)
    job = wait_for_job(service, submit(service, astronaut_jpeg))
    assert job["status"] == "finished", job
    after = scrape(service)
    assert moved(before, after, "simpsonize_jobs_finished_total") == 1
    for reason in metrics.FAILURE_REASONS:
        assert moved(before, after, "simpsonize_jobs_failed_total", reason=reason) == 0
    assert moved(before, after, "simpsonize_jobs_retried_total") == 0
    for stage in STAGES:
        seconds = job["timings"][stage]  # what the worker measured, as the API reports it
        assert moved(before, after, "simpsonize_job_stage_seconds_count", stage=stage) == 1
        assert moved(before, after, "simpsonize_job_stage_seconds_sum", stage=stage) == pytest.approx(seconds, abs=1e-6)
        # Cumulative buckets: the observation is in every bucket from the first bound >= its time on, none below.
        for bound in metrics.BUCKETS:
            expected = 1 if seconds <= bound else 0
            assert (
                moved(before, after, "simpsonize_job_stage_seconds_bucket", stage=stage, le=str(float(bound)))
                == expected
            ), (stage, seconds, bound)
        assert moved(before, after, "simpsonize_job_stage_seconds_bucket", stage=stage, le="+Inf") == 1
    assert moved(before, after, "simpsonize_job_duration_seconds_count") == 1
    assert moved(before, after, "simpsonize_job_duration_seconds_sum") == pytest.approx(job["timings"]["job"], abs=1e-6)
    assert value(after, "simpsonize_queue_depth") == 0 and value(after, "simpsonize_jobs_in_progress") == 0


def test_a_failed_job_counts_as_failed_with_its_reason_and_no_stage_times(service, coffee_jpeg):
    before = scrape(service)
    job = wait_for_job(service, submit(service, coffee_jpeg))  # no face in it
    assert job["status"] == "failed", job
    after = scrape(service)
    assert moved(before, after, "simpsonize_jobs_failed_total", reason="photo") == 1
    assert moved(before, after, "simpsonize_jobs_finished_total") == 0
    for stage in STAGES:
        assert moved(before, after, "simpsonize_job_stage_seconds_count", stage=stage) == 0


def test_a_job_rq_retries_counts_as_retried_then_failed(service, coffee_jpeg):
    """The app enqueues without retries; a job given RQ's Retry is counted once per retry, and failed once."""
    from rq import Retry
    from rq.job import Job, JobStatus

    from simpsonize.queue.jobstore import SERIALIZER

    settings, store = service.settings, service.app.state.store
    before = scrape(service)
    job_id = keys.new_job_id()
    store.redis.set(keys.input_key(settings.key_prefix, job_id), coffee_jpeg, ex=settings.input_ttl)
    store.queue.enqueue_call(
        keys.JOB_FUNCTION,
        args=(job_id, settings.key_prefix, settings.result_ttl),
        job_id=job_id,
        retry=Retry(max=1),
        ttl=settings.queue_ttl,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.result_ttl,
        timeout=settings.job_timeout,
    )
    wait_until(
        lambda: Job.fetch(job_id, connection=store.redis, serializer=SERIALIZER).get_status() == JobStatus.FAILED,
        240,
        "retried job failed",
    )
    after = scrape(service)
    assert moved(before, after, "simpsonize_jobs_retried_total") == 1
    assert moved(before, after, "simpsonize_jobs_failed_total", reason="photo") == 1
    assert moved(before, after, "simpsonize_jobs_finished_total") == 0


@pytest.fixture(scope="module")
def big_photo(astronaut) -> bytes:
    """The astronaut at 1600 px: detection takes long enough to catch the worker in the middle of it."""
    buffer = io.BytesIO()
    astronaut.resize((1600, 1600), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.slow
def test_the_job_of_a_dead_worker_counts_as_failed_worker_stopped(redis_url, tiny_weights, big_photo):
    from simpsonize.queue import liveness

    name = f"victim-{uuid.uuid4().hex[:6]}"
    with worker_and_client(redis_url, tiny_weights, name) as (settings, process, client):
        store = client.app.state.store
        before = scrape(client)
        for _attempt in range(5):
            job_id = submit(client, big_photo)
            wait_until(
                lambda job_id=job_id: client.get(f"/api/v1/jobs/{job_id}").json()["status"] != "queued",
                120,
                "job started",
            )
            process.send_signal(signal.SIGSTOP)
            if client.get(f"/api/v1/jobs/{job_id}").json()["status"] == "started":
                break
            process.send_signal(signal.SIGCONT)
        else:
            pytest.fail("never caught the worker in the middle of a job")
        process.kill()
        process.wait()
        # What `serve` does when one of its workers exits (and live workers do for stale heartbeats).
        assert liveness.reap(store.queue, settings.key_prefix, 2 * HEARTBEAT, dead=(name,)) == [job_id]
        after = scrape(client)
        assert moved(before, after, "simpsonize_jobs_failed_total", reason="worker_stopped") == 1
        assert value(after, "simpsonize_jobs_in_progress") == 0
        wait_until(
            lambda: value(scrape(client), "simpsonize_workers_live") == 0,
            4 * HEARTBEAT + 10,
            "dead worker no longer live",
        )


# -- who may scrape --------------------------------------------------------------------------------------------------


def test_only_allowed_addresses_may_scrape(redis_url):
    from simpsonize.web.main import create_app

    default = make_settings(redis_url)
    assert default.metrics_allow_ips == "127.0.0.1,::1"
    for peer, code in [
        (LOOPBACK, 200),
        (("::1", 50000), 200),
        (("203.0.113.7", 50000), 403),
        (("testclient", 50000), 403),
    ]:
        with metrics_client(default, client=peer) as client:
            response = client.get("/metrics")
            assert response.status_code == code, (peer, response.text)
            if code == 403:
                assert response.json()["detail"] == metrics.FORBIDDEN
    # Behind a trusted proxy on this host, the client is the forwarded address: a public one is refused.
    with metrics_client(default) as client:
        assert client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 403
        assert client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200
    networks = make_settings(redis_url, metrics_allow_ips="10.0.0.0/8, 192.0.2.1")
    for peer, code in [(("10.1.2.3", 1), 200), (("192.0.2.1", 1), 200), (("192.0.2.2", 1), 403), (LOOPBACK, 403)]:
        with metrics_client(networks, client=peer) as client:
            assert client.get("/metrics").status_code == code, peer
    with metrics_client(make_settings(redis_url, metrics_allow_ips="*"), client=("198.51.100.1", 1)) as client:
        assert client.get("/metrics").status_code == 200
    with metrics_client(make_settings(redis_url, metrics_allow_ips="off")) as client:
        assert client.get("/metrics").status_code == 404
    with pytest.raises(ValueError, match="METRICS_ALLOW_IPS"):
        create_app(make_settings(redis_url, metrics_allow_ips="localhost"))


def test_the_security_middlewares_leave_a_scrape_alone(redis_url):
    settings = make_settings(redis_url, allowed_hosts="photos.example.org", rate_limit="1/minute")
    with metrics_client(settings, base_url="http://127.0.0.1") as client:  # Host: the address Prometheus dials
        for _ in range(3):  # not rate limited
            response = client.get("/metrics")
            assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert value(parse(response.text), "simpsonize_redis_up") == 1
    with metrics_client(settings, base_url="http://metrics.internal") as client:  # a name not allowed: say so
        assert client.get("/metrics").status_code == 400


def test_a_scrape_without_redis_still_answers(tiny_weights):
    settings = make_settings("redis://127.0.0.1:1/0", metrics_allow_ips="*")
    with metrics_client(settings) as client:
        assert client.get("/healthz").status_code == 200
        samples = scrape(client)
    assert value(samples, "simpsonize_redis_up") == 0
    assert ("simpsonize_queue_depth", frozenset()) not in samples
    assert value(samples, "simpsonize_http_requests_total", method="GET", route="/healthz", status="200") == 1


# -- the whole service -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_reports_its_workers_jobs_on_its_own_metrics_endpoint(tmp_path, tiny_weights, astronaut_jpeg):
    """`simpsonize serve` with 2 worker processes: the web process's /metrics (loopback, the default allow-list)
    counts the jobs both ran and both workers as live."""
    with (
        serving(tmp_path / "data", tiny_weights, 2, timeout=240) as served,
        httpx.Client(base_url=served.base_url, timeout=60) as client,
    ):

        def live() -> float:
            return value(parse(client.get("/metrics").text), "simpsonize_workers_live")

        wait_until(lambda: live() == 2, 60, "/metrics counting both live workers")  # /readyz counts them already
        before = parse(client.get("/metrics").text)
        ids = [submit(client, astronaut_jpeg) for _ in range(2)]
        for job_id in ids:
            assert wait_for_job(client, job_id)["status"] == "finished"
        response = client.get("/metrics")
        assert response.status_code == 200
        after = parse(response.text)
    assert moved(before, after, "simpsonize_jobs_finished_total") == 2
    for stage in STAGES:
        assert moved(before, after, "simpsonize_job_stage_seconds_count", stage=stage) == 2
    assert (
        moved(before, after, "simpsonize_http_requests_total", method="POST", route="/api/v1/jobs", status="202") == 2
    )
    assert value(after, "simpsonize_workers_live") == 2
