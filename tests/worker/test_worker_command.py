"""`simpsonize worker` itself (worker.process.run), in this process: it serves a queue and stops in burst mode, and
each way it cannot start is an exit code with one sentence. (As a subprocess: the service fixtures and
test_recovery.py; its health check: tests/app/test_security.py.)"""

from __future__ import annotations

import json
import os
import signal
import uuid

import pytest

from app import keys
from app.jobstore import JobStore
from app.uploads import normalise
from cli.main import main
from service_support import make_settings


@pytest.fixture()
def isolated_worker_process(monkeypatch):
    """Restore what `simpsonize worker` sets for its whole process: signal handlers and the loaded model."""
    from worker import jobs

    monkeypatch.setattr(jobs, "_model", None)
    monkeypatch.setattr(jobs, "_model_loads", 0)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def worker_args(redis_url: str, queue: str, weights, *extra: str) -> list[str]:
    return ["worker", "--redis-url", redis_url, "--queue", queue, "--weights", str(weights), "--device", "cpu",
            "--threads", "1", "--name", f"test-{uuid.uuid4().hex[:8]}", "--log-level", "WARNING", *extra]


def test_the_worker_command_serves_the_queue_and_stops_when_it_is_empty(
        redis_url, redis_client, tiny_weights, astronaut_jpeg, coffee_jpeg, isolated_worker_process):
    settings = make_settings(redis_url, tiny_weights)
    store = JobStore(settings, redis_client)
    photos = [normalise(data, max_pixels=settings.max_pixels, max_side=settings.max_side).jpeg
              for data in (astronaut_jpeg, coffee_jpeg)]
    face, no_face = (store.submit(photo) for photo in photos)

    assert main(worker_args(redis_url, settings.queue_name, tiny_weights, "--batch", "1", "--precision", "fp32",
                            "--burst")) == 0

    assert store.view(face).status == "finished"
    meta = json.loads(redis_client.hget(keys.result_key(settings.key_prefix, face), "meta"))
    assert meta["worker"]["pid"] == os.getpid() and meta["worker"]["model_loads"] == 1
    failed = store.view(no_face)
    assert failed.status == "failed" and failed.error.startswith("No face found")
    assert store.queue.count == 0
    assert store.live_workers() == 0  # a burst worker signs off when it stops


def test_the_worker_command_needs_a_redis_url(monkeypatch, capsys):
    from app.settings import Settings
    from worker import process

    monkeypatch.setattr(process, "get_settings", lambda: Settings(redis_url=None))
    assert main(["worker"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "REDIS_URL is not set" in err and err.endswith(".")


def test_the_worker_command_exits_3_when_redis_is_unreachable(tiny_weights, isolated_worker_process, capsys):
    """3, not 2: `serve` tells a Redis not up yet from bad weights or settings by this code."""
    assert main(worker_args("redis://127.0.0.1:1/0", "q", tiny_weights, "--batch", "1", "--precision", "fp32")) == 3
    err = capsys.readouterr().err.strip()
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in err and "Traceback" not in err


@pytest.mark.parametrize("batch", ["0", "65", "many"])
def test_the_worker_command_refuses_a_bad_batch_size(redis_url, tiny_weights, isolated_worker_process, capsys, batch):
    assert main(worker_args(redis_url, "q", tiny_weights, "--batch", batch)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("simpsonize worker: the worker batch must be") and "Traceback" not in err


def test_the_worker_health_check_exits_1_without_loading_a_model(redis_url, tmp_path, capsys):
    # --check loads nothing: even weights that do not exist do not matter
    assert main(["worker", "--redis-url", redis_url, "--queue", f"nobody-{uuid.uuid4().hex[:8]}", "--check",
                 "--weights", str(tmp_path / "none.safetensors")]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: no worker of host")
