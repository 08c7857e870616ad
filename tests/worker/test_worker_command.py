"""`simpsonize worker` itself (simpsonize.worker.process.run), in this process: it serves a queue and stops in burst
mode, and each way it cannot start is an exit code with one sentence. (As a subprocess: the service fixtures and
test_recovery.py; its health check: tests/web/test_security.py.)"""

from __future__ import annotations

import json
import uuid
from datetime import UTC

import pytest
from service_support import make_settings

from simpsonize.cli import main
from simpsonize.queue import keys
from simpsonize.queue.jobstore import JobStore
from simpsonize.web.uploads import normalise


def worker_args(redis_url: str, queue: str, weights, *extra: str) -> list[str]:
    return [
        "worker",
        "--redis-url",
        redis_url,
        "--queue",
        queue,
        "--weights",
        str(weights),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--name",
        f"test-{uuid.uuid4().hex[:8]}",
        "--log-level",
        "WARNING",
        *extra,
    ]


def test_the_worker_command_serves_the_queue_and_stops_when_it_is_empty(
    redis_url, redis_client, tiny_weights, astronaut_jpeg, coffee_jpeg, restore_signals
):
    settings = make_settings(redis_url, tiny_weights)
    store = JobStore(settings, redis_client)
    photos = [
        normalise(data, max_pixels=settings.max_pixels, max_side=settings.max_side).jpeg
        for data in (astronaut_jpeg, coffee_jpeg)
    ]
    face, no_face = (store.submit(photo) for photo in photos)

    assert (
        main(
            worker_args(redis_url, settings.queue_name, tiny_weights, "--batch", "1", "--precision", "fp32", "--burst")
        )
        == 0
    )

    assert store.view(face).status == "finished"
    meta = json.loads(redis_client.hget(keys.result_key(settings.key_prefix, face), "meta"))
    assert meta["worker"] == {"device": "cpu"}
    failed = store.view(no_face)
    assert failed.status == "failed" and failed.error.startswith("No face found")
    assert store.queue.count == 0
    assert store.live_workers() == 0  # a burst worker signs off when it stops


def test_the_worker_command_needs_a_redis_url(monkeypatch, capsys):
    from simpsonize.settings import Settings
    from simpsonize.worker import process

    monkeypatch.setattr(process, "get_settings", lambda: Settings(redis_url=None))
    assert main(["worker"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "REDIS_URL is not set" in err and err.endswith(".")


def test_the_worker_command_exits_3_when_redis_is_unreachable(tiny_weights, restore_signals, capsys):
    """3, not 2: `serve` tells a Redis not up yet from bad weights or settings by this code."""
    assert main(worker_args("redis://127.0.0.1:1/0", "q", tiny_weights, "--batch", "1", "--precision", "fp32")) == 3
    err = capsys.readouterr().err.strip()
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in err and "Traceback" not in err


@pytest.mark.parametrize("batch", ["0", "65", "many"])
def test_the_worker_command_refuses_a_bad_batch_size(redis_url, tiny_weights, restore_signals, capsys, batch):
    assert main(worker_args(redis_url, "q", tiny_weights, "--batch", batch)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("simpsonize worker: the worker batch must be") and "Traceback" not in err


def test_the_worker_health_check_exits_1_without_loading_a_model(redis_url, tmp_path, capsys):
    # --check loads nothing: even weights that do not exist do not matter
    assert (
        main(
            [
                "worker",
                "--redis-url",
                redis_url,
                "--queue",
                f"nobody-{uuid.uuid4().hex[:8]}",
                "--check",
                "--weights",
                str(tmp_path / "none.safetensors"),
            ]
        )
        == 1
    )
    assert capsys.readouterr().out.startswith("unhealthy: no worker of host")


def test_a_live_workers_heartbeat_thread_fails_the_job_of_a_worker_gone_silent(redis_url, redis_client, tiny_weights):
    """A worker on another machine froze mid-photo: any live worker ends its job with the sentence once the frozen
    one's heartbeat is 4 intervals old, from its heartbeat thread (busy or idle)."""
    import threading
    import time
    from datetime import datetime, timedelta

    from rq import Worker
    from rq.executions import Execution
    from rq.utils import utcformat

    from simpsonize.queue.jobstore import SERIALIZER
    from simpsonize.queue.liveness import WORKER_STOPPED
    from simpsonize.worker.model_worker import ModelWorker

    settings = make_settings(redis_url, tiny_weights)
    store = JobStore(settings, redis_client)
    job_id = store.submit(b"a photo")
    redis_client.lrem(store.queue.key, 0, job_id)  # taken from the queue ...
    frozen = Worker(
        [store.queue], connection=redis_client, name=f"frozen-{uuid.uuid4().hex[:6]}", serializer=SERIALIZER
    )
    frozen.register_birth()
    job = store.queue.fetch_job(job_id)
    frozen.prepare_job_execution(job)  # ... and started, as RQ starts a job, by a worker that then froze
    with redis_client.pipeline() as pipe:
        Execution.create(job, ttl=600, pipeline=pipe, worker_name=frozen.name)
        pipe.execute()
    assert store.view(job_id).status == "started"

    live = ModelWorker([store.queue], connection=redis_client, name=f"live-{uuid.uuid4().hex[:6]}")
    live.key_prefix = settings.key_prefix
    live.heartbeat_interval = 0.2
    live.register_birth()
    passes = []

    def counted_reap():
        ModelWorker._reap(live)
        passes.append(1)

    live._reap = counted_reap
    # first its heartbeat does not age during the test: the job must be left alone
    redis_client.hset(frozen.key, "last_heartbeat", utcformat(datetime.now(UTC) + timedelta(hours=1)))
    live._beating = threading.Event()
    beat = threading.Thread(target=live._beat, daemon=True)
    beat.start()
    try:
        deadline = time.monotonic() + 30
        while len(passes) < 2:
            assert time.monotonic() < deadline, "the heartbeat thread did not run"
            time.sleep(0.05)
        assert store.view(job_id).status == "started"
        stale = datetime.now(UTC) - timedelta(seconds=4 * live.heartbeat_interval + 1)
        redis_client.hset(frozen.key, "last_heartbeat", utcformat(stale))
        deadline = time.monotonic() + 30
        while store.view(job_id).status == "started":
            assert time.monotonic() < deadline, "the live worker did not reap the frozen worker's job"
            time.sleep(0.1)
    finally:
        live._beating.set()
        beat.join(10)
        live.register_death()
        frozen.register_death()
    view = store.view(job_id)
    assert view.status == "failed" and view.error == WORKER_STOPPED
    assert not redis_client.exists(keys.input_key(settings.key_prefix, job_id))
    assert store.live_workers() == 0
    # the failed-job registry this created expires too (nothing else may write to this queue again)
    assert 0 < redis_client.ttl(store.queue.failed_job_registry.key)
