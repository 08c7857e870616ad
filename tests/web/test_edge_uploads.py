"""Edge uploads through the API (real Redis, real worker): each one ends with a sentence that names the cause."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from service_support import png_size, wait_for_job

from simpsonize.queue.jobstore import GENERIC_FAILURE


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "words"), [((1, 1), "too small"), ((4000, 8), "too small"), ((2000, 300), "too long and thin")]
)
def test_shapes_without_room_for_a_face_are_refused_at_upload(idle_client, size, words):
    """These were accepted (202) and then failed in the worker with the generic sentence."""
    data = encode(Image.new("RGB", size, (120, 100, 90)), "PNG")
    response = idle_client.post("/api/v1/jobs", files={"file": ("edge.png", data, "image/png")})
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]
    assert idle_client.app.state.store.queue.count == 0  # nothing was queued


def test_an_iphone_heic_photo_is_simpsonized(client, astronaut):
    response = client.post(
        "/api/v1/jobs", files={"file": ("IMG_0001.HEIC", encode(astronaut, "HEIF", quality=90), "image/heic")}
    )
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

    from service_support import make_settings

    from simpsonize.queue import keys
    from simpsonize.queue.jobstore import JobStore
    from simpsonize.worker.model_worker import ModelWorker

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


# -- the app's own limits fire, and the bytes decide what a file is ---------------------------------------------------


def test_the_apps_pixel_limit_fires_below_pillows_bomb_guard(idle_client, idle_settings):
    """30 MP PNG and 52 MP JPEG: over the app's limits (24 MP for formats decoded at full size, 50 MP for JPEG) but
    under Pillow's own guard, so only the app's check can refuse them; its sentence names the size."""
    assert idle_settings.max_pixels_full_decode < 30_000_000 < idle_settings.max_pixels < 52_000_000
    assert Image.MAX_IMAGE_PIXELS > 52_000_000  # Pillow would decode both without a word
    png = encode(Image.new("1", (6000, 5000)), "PNG")
    response = idle_client.post("/api/v1/jobs", files={"file": ("big.png", png, "image/png")})
    assert response.status_code == 413, response.text
    assert "(6000x5000)" in response.json()["detail"] and "24 megapixels for PNG" in response.json()["detail"]
    jpeg = encode(Image.new("L", (8000, 6500)), "JPEG", quality=50)
    response = idle_client.post("/api/v1/jobs", files={"file": ("big.jpg", jpeg, "image/jpeg")})
    assert response.status_code == 413, response.text
    assert "(8000x6500)" in response.json()["detail"] and "50 megapixels" in response.json()["detail"]
    # the same 30 MP as a JPEG is within its limit: decoded reduced, and queued
    jpeg = encode(Image.new("L", (6000, 5000), 128), "JPEG", quality=50)
    response = idle_client.post("/api/v1/jobs", files={"file": ("ok.jpg", jpeg, "image/jpeg")})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("notes.txt", "text/plain"), ("a.gif", "image/gif"), ("photo.png", "image/png"), ("noname", "")],
)
def test_a_jpeg_is_judged_by_its_bytes_not_its_name_or_type(
    idle_client, redis_client, idle_settings, astronaut, name, content_type
):
    data = encode(astronaut, "JPEG", quality=90)
    response = idle_client.post("/api/v1/jobs", files={"file": (name, data, content_type)})
    assert response.status_code == 202, response.text
    from simpsonize.queue import keys

    stored = redis_client.get(keys.input_key(idle_settings.key_prefix, response.json()["id"]))
    image = Image.open(io.BytesIO(stored))
    assert image.format == "JPEG" and image.size == astronaut.size


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_415_even_named_and_typed_as_jpeg(idle_client, astronaut, fmt):
    data = encode(astronaut, fmt)
    response = idle_client.post("/api/v1/jobs", files={"file": ("selfie.jpg", data, "image/jpeg")})
    assert response.status_code == 415, response.text
    assert response.json()["detail"] == "The file is not a JPEG, PNG, WebP, HEIC or AVIF image."
    assert idle_client.app.state.store.queue.count == 0


def test_a_client_that_disconnects_mid_upload_gets_400_and_frees_its_slot(idle_settings, astronaut):
    """Through the whole ASGI app: the body stops halfway with an http.disconnect."""
    import asyncio

    from simpsonize.web.main import create_app

    application = create_app(idle_settings)
    boundary = "disconnectboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + encode(astronaut, "JPEG")
        + f"\r\n--{boundary}--\r\n".encode()
    )
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/jobs",
        "raw_path": b"/api/v1/jobs",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    messages = iter(
        [{"type": "http.request", "body": body[: len(body) // 2], "more_body": True}, {"type": "http.disconnect"}]
    )
    sent: list[dict] = []

    async def receive():
        try:
            return next(messages)
        except StopIteration:  # asked again after the disconnect
            await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(application(scope, receive, send), 60))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"interrupted" in payload
    assert application.state.upload_gate.in_progress == 0
    assert application.state.store.queue.count == 0
