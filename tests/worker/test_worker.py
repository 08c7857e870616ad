"""The job function and the worker process: model loaded once per process, failures carry the user's reason."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image
from rq.job import Job

from simpsonize.queue import keys
from simpsonize.queue.jobstore import JobStore
from simpsonize.web.uploads import normalise
from service_support import REPO_ROOT, child_env, make_settings

NO_FACE = "No face found in the photo."


@pytest.fixture()
def fresh_model_state(monkeypatch):
    """Forget this process's model and count Simpsonizer constructions."""
    import simpsonize.model.pipeline
    from simpsonize.worker import jobs

    constructed = []

    class CountingSimpsonizer(simpsonize.model.pipeline.Simpsonizer):
        def __init__(self, *args, **kwargs):
            constructed.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(simpsonize.model.pipeline, "Simpsonizer", CountingSimpsonizer)
    monkeypatch.setattr(jobs, "_model", None)
    monkeypatch.setattr(jobs, "_model_loads", 0)
    return constructed


def run_burst(store: JobStore, bookkeeping_ttl: int = 7200) -> None:
    from simpsonize.worker.process import ModelWorker

    worker = ModelWorker([store.queue], connection=store.redis)
    worker.bookkeeping_ttl = bookkeeping_ttl
    worker.work(burst=True, logging_level="WARNING")


def test_simpsonize_bytes_returns_a_png_a_jpeg_crop_and_timings(tiny_weights, astronaut_jpeg, coffee_jpeg):
    from simpsonize.model.errors import NoFaceFound
    from simpsonize.model.pipeline import Simpsonizer
    from simpsonize.worker.jobs import simpsonize_bytes

    model = Simpsonizer(tiny_weights, device="cpu")
    output = simpsonize_bytes(astronaut_jpeg, model)
    for data, image_format in ((output.image_png, "PNG"), (output.face_jpeg, "JPEG")):
        image = Image.open(io.BytesIO(data))
        assert image.format == image_format and image.size == (256, 256)
    assert {"detect", "generate", "total", "encode"} <= set(output.meta["timings"])
    assert output.meta["face"]["face"]["box"]
    with pytest.raises(NoFaceFound):
        simpsonize_bytes(coffee_jpeg, model)


def test_model_is_loaded_once_for_many_jobs(fresh_model_state, restore_signals, redis_url, redis_client,
                                            tiny_weights, astronaut_jpeg, coffee_jpeg):
    from simpsonize.worker.jobs import load_model, model_loads

    settings = make_settings(redis_url, tiny_weights)
    store = JobStore(settings, redis_client)
    photo = normalise(astronaut_jpeg, max_pixels=settings.max_pixels, max_side=settings.max_side).jpeg
    no_face = normalise(coffee_jpeg, max_pixels=settings.max_pixels, max_side=settings.max_side).jpeg
    ids = [store.submit(photo) for _ in range(3)] + [store.submit(no_face)]

    load_model(tiny_weights, device="cpu")  # what `simpsonize worker` does before taking jobs
    run_burst(store)

    assert len(fresh_model_state) == 1 and model_loads() == 1
    for job_id in ids[:3]:
        assert store.view(job_id).status == "finished"
        meta = json.loads(redis_client.hget(keys.result_key(settings.key_prefix, job_id), "meta"))
        assert meta["worker"] == {"pid": os.getpid(), "model_loads": 1, "device": "cpu"}  # no fork per job
    failed = store.view(ids[3])
    assert failed.status == "failed" and failed.error.startswith(NO_FACE)
    for job_id in ids:
        assert not redis_client.exists(keys.input_key(settings.key_prefix, job_id))


def test_a_job_deleted_while_running_stores_no_result(fresh_model_state, restore_signals, redis_url, redis_client,
                                                      tiny_weights, astronaut_jpeg):
    settings = make_settings(redis_url, tiny_weights)
    store = JobStore(settings, redis_client)
    job_id = store.submit(normalise(astronaut_jpeg, max_pixels=10**8, max_side=1600).jpeg)
    redis_client.set(keys.deleted_key(settings.key_prefix, job_id), b"1", ex=60)  # as DELETE does mid-run
    from simpsonize.worker.jobs import load_model

    load_model(tiny_weights, device="cpu")
    run_burst(store)
    assert Job.fetch(job_id, connection=redis_client).get_status() == "finished"  # it ran, and kept nothing
    assert not redis_client.exists(keys.result_key(settings.key_prefix, job_id))
    assert not redis_client.exists(keys.input_key(settings.key_prefix, job_id))
    assert store.view(job_id) is None


def test_unexpected_errors_fail_with_a_generic_sentence(fresh_model_state, restore_signals, redis_url,
                                                        redis_client, tiny_weights, monkeypatch):
    from simpsonize.queue.jobstore import GENERIC_FAILURE
    from simpsonize.worker import jobs

    def broken(data, simpsonizer=None):
        raise RuntimeError("CUDA out of memory (internal detail)")

    monkeypatch.setattr(jobs, "simpsonize_bytes", broken)
    monkeypatch.setattr(jobs, "_model", object())
    settings = make_settings(redis_url, tiny_weights)
    store = JobStore(settings, redis_client)
    job_id = store.submit(b"\xff\xd8 whatever")
    run_burst(store)
    view = store.view(job_id)
    assert view.status == "failed" and view.error == GENERIC_FAILURE
    assert "internal detail" not in view.error
    assert Job.fetch(job_id, connection=redis_client).get_status() == "failed"


def test_worker_refuses_to_start_without_weights(tmp_path, redis_url):
    result = subprocess.run([sys.executable, "-m", "simpsonize.cli", "worker", "--redis-url", redis_url,
                             "--weights", str(tmp_path / "none.safetensors")], cwd=REPO_ROOT, env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "none.safetensors does not exist" in lines[0]
