"""Faults under `simpsonize serve` (and with an external Redis): a worker or Redis SIGKILLed mid-work.

The service must stay up, end the job in hand with a sentence (never leave it `started` forever), keep the queued
jobs (worker crash) and be ready again soon after (Redis crash). Each test prints how long recovery took.
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from service_support import descendants, serving, start_worker

from simpsonize.queue.liveness import WORKER_STOPPED
from simpsonize.web.routes.jobs import NOT_FOUND

pytestmark = pytest.mark.slow

DONE = ("finished", "failed")


@pytest.fixture(scope="module")
def big_photo(astronaut) -> bytes:
    """The astronaut at 1600 px: face detection takes long enough to catch the worker in the middle of it."""
    buffer = io.BytesIO()
    astronaut.resize((1600, 1600), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def children_running(launcher_pid: int, word: str) -> list[int]:
    return [pid for pid in descendants(launcher_pid) if word in cmdline(pid)]


def upload(client: httpx.Client, photo: bytes) -> str:
    response = client.post("/api/v1/jobs", files={"file": ("a.jpg", photo, "image/jpeg")})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def state(client: httpx.Client, job_id: str) -> dict:
    response = client.get(f"/api/v1/jobs/{job_id}")
    if response.status_code == 404:
        return {"status": "gone", "detail": response.json()["detail"]}
    assert response.status_code == 200, response.text
    return response.json()


def wait_done(client: httpx.Client, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (current := state(client, job_id))["status"] not in (*DONE, "gone"):
        assert time.monotonic() < deadline, f"job {job_id} still {current['status']} after {timeout:.0f} s"
        time.sleep(0.1)
    return current


def test_a_worker_killed_mid_job_is_replaced_and_its_job_fails_with_a_sentence(
    tmp_path, tiny_weights, big_photo, astronaut_jpeg
):
    with serving(tmp_path / "data", tiny_weights, 1, "--threads", "1") as served:
        process = served.process
        with httpx.Client(base_url=served.base_url, timeout=30) as client:
            for _attempt in range(5):
                (worker,) = children_running(process.pid, "simpsonize.cli worker")
                victim = upload(client, big_photo)
                queued = [upload(client, astronaut_jpeg) for _ in range(2)]  # behind it, on the same worker
                deadline = time.monotonic() + 120
                while state(client, victim)["status"] == "queued":
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                os.kill(worker, signal.SIGSTOP)  # frozen: if it is still `started` now, it is caught mid-job
                if state(client, victim)["status"] == "started":
                    break
                os.kill(worker, signal.SIGCONT)  # it finished first; try again with a new photo
                for job_id in queued:
                    wait_done(client, job_id, 240)
            else:
                pytest.fail("never caught the worker in the middle of a job")
            dead_name = cmdline(worker).split("--name ")[1].split()[0]
            os.kill(worker, signal.SIGKILL)  # as the kernel's OOM killer does
            killed = time.monotonic()

            ended = wait_done(client, victim, 60)
            job_ended_after = time.monotonic() - killed
            assert ended["status"] == "failed" and ended["error"] == WORKER_STOPPED, ended
            for job_id in queued:  # the queued jobs were kept, and the replacement worker runs them
                assert wait_done(client, job_id, 240)["status"] == "finished"
            ready_after = time.monotonic() - killed
            new = upload(client, astronaut_jpeg)
            assert wait_done(client, new, 240)["status"] == "finished"
            assert client.get("/readyz").json()["detail"].endswith("1 worker alive.")
        assert process.poll() is None  # the service stayed up
        (replacement,) = children_running(process.pid, "simpsonize.cli worker")
        assert replacement != worker
        assert cmdline(replacement).split("--name ")[1].split()[0] not in ("", dead_name)  # a new RQ name
        print(f"\nworker SIGKILL: job failed after {job_ended_after:.1f} s, queued jobs done after {ready_after:.1f} s")
        err = served.stop(signal.SIGTERM)
    assert process.returncode == 0, err
    assert "killed by signal 9; starting a new one" in err


def test_a_killed_embedded_redis_is_restarted_and_the_service_recovers(tmp_path, tiny_weights, astronaut_jpeg):
    data_dir = tmp_path / "data"
    with serving(data_dir, tiny_weights, 1, "--threads", "1") as served:
        process = served.process
        with httpx.Client(base_url=served.base_url, timeout=30) as client:
            in_flight = [upload(client, astronaut_jpeg) for _ in range(3)]
            (redis_pid,) = children_running(process.pid, "redis-server")
            os.kill(redis_pid, signal.SIGKILL)
            killed = time.monotonic()
            deadline = killed + 30
            while True:
                response = client.get("/readyz")
                if response.status_code == 200:
                    break
                assert response.status_code == 503, response.text
                assert time.monotonic() < deadline, f"not ready 30 s after Redis was killed: {response.text}"
                time.sleep(0.1)
            ready_after = time.monotonic() - killed
            assert children_running(process.pid, "redis-server") != [redis_pid]
            assert (data_dir / "redis.sock").exists()  # the same socket
            for job_id in in_flight:  # lost with the old Redis, or ended: never a hang
                ended = wait_done(client, job_id, 240)
                if ended["status"] == "gone":
                    assert ended["detail"] == NOT_FOUND and "upload the photo again" in ended["detail"]
            new = upload(client, astronaut_jpeg)
            assert wait_done(client, new, 240)["status"] == "finished"
        assert process.poll() is None
        print(f"\nembedded Redis SIGKILL: ready again after {ready_after:.1f} s")
        err = served.stop(signal.SIGTERM)
    assert process.returncode == 0, err
    assert "restarting it on" in err


# -- workers and Redis outside `serve` (REDIS_URL deployments) --------------------------------------------------------

HEARTBEAT = 2  # seconds: alive while the last heartbeat is <= 4 s old; a silent worker's job is failed after 8 s
WORKER_ENV = {"SIMPSONIZE_WORKER_HEARTBEAT": str(HEARTBEAT)}  # start_worker's **env: the workers' heartbeat


def wait_until(predicate, timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_liveness_follows_the_heartbeat_and_live_workers_end_a_dead_workers_job(redis_url, tiny_weights, big_photo):
    """Two workers on one queue, no launcher: the one caught mid-job is frozen (its RQ key lives on for minutes),
    so /readyz must stop counting it within 2 heartbeats, and the other one must fail its job with a sentence."""
    from fastapi.testclient import TestClient
    from rq.job import Job
    from service_support import make_settings, stop

    from simpsonize.web.main import create_app

    settings = make_settings(redis_url, tiny_weights, worker_heartbeat=HEARTBEAT)
    workers = {name: start_worker(settings, tiny_weights, name, **WORKER_ENV) for name in ("w-a", "w-b")}
    try:
        with TestClient(create_app(settings)) as client:
            store = client.app.state.store
            wait_until(lambda: store.live_workers() == 2, 180, "two workers alive")
            for _attempt in range(5):
                job_id = client.post("/api/v1/jobs", files={"file": ("a.jpg", big_photo, "image/jpeg")}).json()["id"]
                wait_until(lambda job_id=job_id: state(client, job_id)["status"] != "queued", 120, "job started")
                name = Job.fetch(job_id, connection=store.redis).worker_name
                victim = workers[name]
                victim.send_signal(signal.SIGSTOP)
                if state(client, job_id)["status"] == "started":
                    break
                victim.send_signal(signal.SIGCONT)
            else:
                pytest.fail("never caught a worker in the middle of a job")
            assert store.redis.exists(f"rq:worker:{name}")  # RQ's key still says alive; the heartbeat does not
            stale_after = wait_until(lambda: store.live_workers() == 1, 3 * HEARTBEAT + 5, "frozen worker dropped")
            assert client.get("/readyz").status_code == 200  # the other worker keeps the service ready
            victim.kill()
            ended = wait_done(client, job_id, 60)
            assert ended["status"] == "failed" and ended["error"] == WORKER_STOPPED, ended
            assert not store.redis.exists(f"{settings.key_prefix}:input:{job_id}")  # its photo is not kept
            print(f"\nfrozen worker: not counted after {stale_after:.1f} s; its job failed by the other worker")
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
            stop(process)


def test_web_and_worker_ride_out_a_restart_of_an_external_redis(tmp_path, tiny_weights, astronaut_jpeg):
    from fastapi.testclient import TestClient
    from service_support import make_settings, stop, wait_for_job

    from simpsonize.serve.embedded import EmbeddedRedis
    from simpsonize.web.main import create_app

    redis = EmbeddedRedis(tmp_path / "redis")
    url = redis.start()
    settings = make_settings(url, tiny_weights, worker_heartbeat=HEARTBEAT)
    worker = start_worker(settings, tiny_weights, "w-ext", **WORKER_ENV)
    try:
        with TestClient(create_app(settings)) as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, 180, "ready")
            redis.process.kill()  # SIGKILL; nothing restarts it but us, as a Redis service manager would
            redis.process.wait()
            down = client.get("/readyz")
            assert down.status_code == 503 and "Redis" in down.json()["detail"]
            refused = client.post("/api/v1/jobs", files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")})
            assert refused.status_code == 503 and refused.headers["retry-after"] == str(settings.retry_after)
            assert "try again" in refused.json()["detail"]
            redis.restart()
            ready_after = wait_until(lambda: client.get("/readyz").status_code == 200, 30, "ready after restart")
            job = client.post("/api/v1/jobs", files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")})
            assert job.status_code == 202, job.text
            assert wait_for_job(client, job.json()["id"])["status"] == "finished"
            assert worker.poll() is None  # neither the worker nor the web process was restarted
            print(f"\nexternal Redis restart: ready again {ready_after:.1f} s after it came back")
    finally:
        stop(worker)
        redis.stop()
