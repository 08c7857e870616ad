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
from service_support import REPO_ROOT, child_env, make_settings

from simpsonize.queue import keys
from simpsonize.queue.jobstore import JobStore
from simpsonize.web.uploads import normalise

NO_FACE = "No face found in the photo."


@pytest.fixture()
def constructed(monkeypatch):
    """Count Simpsonizer constructions."""
    import simpsonize.model.pipeline

    built = []

    class CountingSimpsonizer(simpsonize.model.pipeline.Simpsonizer):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(simpsonize.model.pipeline, "Simpsonizer", CountingSimpsonizer)
    return built


def run_burst(store: JobStore, model, bookkeeping_ttl: int = 7200) -> None:
    from simpsonize.worker.model_worker import ModelWorker

    worker = ModelWorker([store.queue], connection=store.redis, model=model)
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


def test_model_is_loaded_once_for_many_jobs(
    constructed, restore_signals, redis_url, redis_client, tiny_weights, astronaut_jpeg, coffee_jpeg, monkeypatch
):
    from simpsonize.worker.jobs import ModelHolder

    settings = make_settings(redis_url, tiny_weights)
    store = JobStore(settings, redis_client)
    photo = normalise(astronaut_jpeg, max_pixels=settings.max_pixels, max_side=settings.max_side).jpeg
    no_face = normalise(coffee_jpeg, max_pixels=settings.max_pixels, max_side=settings.max_side).jpeg
    ids = [store.submit(photo) for _ in range(3)] + [store.submit(no_face)]

    holder = ModelHolder()
    model = holder.load(tiny_weights, device="cpu")  # what `simpsonize worker` does before taking jobs
    ran_in = []
    real = model.simpsonize
    monkeypatch.setattr(model, "simpsonize", lambda data: ran_in.append(os.getpid()) or real(data))
    run_burst(store, holder)

    assert len(constructed) == 1 and holder.get() is model
    assert ran_in == [os.getpid()] * 4  # every photo went through the one model, in this process: no fork per job
    for job_id in ids[:3]:
        assert store.view(job_id).status == "finished"
        meta = json.loads(redis_client.hget(keys.result_key(settings.key_prefix, job_id), "meta"))
        assert meta["worker"] == {"device": "cpu"}
    failed = store.view(ids[3])
    assert failed.status == "failed" and failed.error.startswith(NO_FACE)
    for job_id in ids:
        assert not redis_client.exists(keys.input_key(settings.key_prefix, job_id))


def test_a_job_deleted_while_running_stores_no_result(
    restore_signals, redis_url, redis_client, tiny_weights, astronaut_jpeg
):
    settings = make_settings(redis_url, tiny_weights)
    store = JobStore(settings, redis_client)
    job_id = store.submit(normalise(astronaut_jpeg, max_pixels=10**8, max_side=1600).jpeg)
    redis_client.set(keys.deleted_key(settings.key_prefix, job_id), b"1", ex=60)  # as DELETE does mid-run
    from simpsonize.worker.jobs import ModelHolder

    holder = ModelHolder()
    holder.load(tiny_weights, device="cpu")
    run_burst(store, holder)
    assert Job.fetch(job_id, connection=redis_client).get_status() == "finished"  # it ran, and kept nothing
    assert not redis_client.exists(keys.result_key(settings.key_prefix, job_id))
    assert not redis_client.exists(keys.input_key(settings.key_prefix, job_id))
    assert store.view(job_id) is None


def test_unexpected_errors_fail_with_a_generic_sentence(restore_signals, redis_url, redis_client, tiny_weights):
    from simpsonize.queue.jobstore import GENERIC_FAILURE
    from simpsonize.worker.jobs import ModelHolder

    class Broken:
        def simpsonize(self, data):
            raise RuntimeError("CUDA out of memory (internal detail)")

    settings = make_settings(redis_url, tiny_weights)
    store = JobStore(settings, redis_client)
    job_id = store.submit(b"\xff\xd8 whatever")
    run_burst(store, ModelHolder(Broken()))
    view = store.view(job_id)
    assert view.status == "failed" and view.error == GENERIC_FAILURE
    assert "internal detail" not in view.error
    assert Job.fetch(job_id, connection=redis_client).get_status() == "failed"


def test_worker_refuses_to_start_without_weights(tmp_path, redis_url):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "simpsonize.cli",
            "worker",
            "--redis-url",
            redis_url,
            "--weights",
            str(tmp_path / "none.safetensors"),
        ],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "none.safetensors does not exist" in lines[0]
