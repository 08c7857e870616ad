"""Edge uploads through the API (real Redis, real worker): each one ends with a sentence that names the cause."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.jobstore import GENERIC_FAILURE
from service_support import png_size, wait_for_job


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(("size", "words"), [((1, 1), "too small"), ((4000, 8), "too small"),
                                             ((2000, 300), "too long and thin")])
def test_shapes_without_room_for_a_face_are_refused_at_upload(idle_client, size, words):
    """These were accepted (202) and then failed in the worker with the generic sentence."""
    data = encode(Image.new("RGB", size, (120, 100, 90)), "PNG")
    response = idle_client.post("/api/v1/jobs", files={"file": ("edge.png", data, "image/png")})
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]
    assert idle_client.app.state.store.queue.count == 0  # nothing was queued


def test_an_iphone_heic_photo_is_simpsonized(client, astronaut):
    response = client.post("/api/v1/jobs", files={"file": ("IMG_0001.HEIC", encode(astronaut, "HEIF", quality=90),
                                                           "image/heic")})
    assert response.status_code == 202, response.text
    state = wait_for_job(client, response.json()["id"])
    assert state["status"] == "finished", state
    assert png_size(client.get(state["result_url"]).content) == (256, 256)


def test_avif_is_accepted(idle_client, astronaut):
    response = idle_client.post("/api/v1/jobs", files={"file": ("a.avif", encode(astronaut, "AVIF"), "image/avif")})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("extra", [{}, {"note": "hello"}, {"file2": "x" * 100_000}])
def test_a_photo_in_the_wrong_field_is_422_naming_the_field(idle_client, astronaut_jpeg, extra):
    """It was 413 "larger than 10 MB" for any photo over 64 KB sent under another name."""
    big = astronaut_jpeg * 3  # ~300 KB
    response = idle_client.post("/api/v1/jobs", files={"photo": ("a.jpg", big, "image/jpeg")}, data=extra)
    assert response.status_code == 422, response.text
    assert "'file'" in response.json()["detail"]


def test_a_job_whose_input_is_gone_fails_with_a_sentence(redis_url, redis_client, tiny_weights):
    """The input expired or was deleted before the job ran: named, not the generic sentence."""
    import signal

    from app import keys
    from app.jobstore import JobStore
    from service_support import make_settings
    from worker.process import ModelWorker

    settings = make_settings(redis_url, tiny_weights)
    store = JobStore(settings, redis_client)
    job_id = store.submit(b"placeholder")
    redis_client.delete(keys.input_key(settings.key_prefix, job_id))
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ModelWorker([store.queue], connection=store.redis).work(burst=True, logging_level="WARNING")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    view = store.view(job_id)
    assert view.status == "failed" and "upload it again" in view.error and view.error != GENERIC_FAILURE
