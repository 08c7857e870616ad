"""REST API against a real Redis and a real `simpsonize worker` subprocess (tiny weights)."""

from __future__ import annotations

import io
import json

from PIL import Image
from service_support import png_size, wait_for_job

from simpsonize.queue import keys
from simpsonize.queue.jobstore import JobStore

NO_FACE = "No face found in the photo."


def submit(client, data: bytes, name: str = "photo.jpg", content_type: str = "image/jpeg"):
    return client.post("/api/v1/jobs", files={"file": (name, data, content_type)})


def rgb_png(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_astronaut_is_simpsonized(client, astronaut_jpeg, service_settings, redis_client):
    response = submit(client, astronaut_jpeg)
    assert response.status_code == 202, response.text
    created = response.json()
    job_id = created["id"]
    assert keys.is_job_id(job_id)
    assert created["status"] == "queued"
    assert created["status_url"] == f"/api/v1/jobs/{job_id}"
    assert created["result_url"] == f"/api/v1/jobs/{job_id}/result"
    assert response.headers["location"] == created["status_url"]

    state = wait_for_job(client, job_id)
    assert state["status"] == "finished", state
    assert "error" not in state
    assert {"detect", "generate", "total", "queued", "end_to_end"} <= set(state["timings"])
    assert state["face"]["face"]["box"]

    result = client.get(created["result_url"])
    assert result.status_code == 200
    assert result.headers["content-type"] == "image/png"
    assert png_size(result.content) == (256, 256)
    face = client.get(state["input_url"])  # a preview: JPEG, and said so
    assert face.status_code == 200 and face.headers["content-type"] == "image/jpeg"
    assert face.headers["content-disposition"].endswith('.jpg"')
    crop = Image.open(io.BytesIO(face.content))
    assert crop.format == "JPEG" and crop.size == (256, 256)
    download = client.get(created["result_url"], params={"download": 1})
    assert download.headers["content-disposition"].startswith("attachment")

    # the input was deleted when the job ended; the result carries the result TTL
    prefix = service_settings.key_prefix
    assert not redis_client.exists(keys.input_key(prefix, job_id))
    ttl = redis_client.ttl(keys.result_key(prefix, job_id))
    assert 0 < ttl <= service_settings.result_ttl


def test_photo_without_face_fails_with_the_reason(client, coffee_jpeg):
    job_id = submit(client, coffee_jpeg).json()["id"]
    state = wait_for_job(client, job_id)
    assert state["status"] == "failed"
    assert state["error"].startswith(NO_FACE)
    assert "Traceback" not in state["error"]
    response = client.get(f"/api/v1/jobs/{job_id}/result")
    assert response.status_code == 409
    assert NO_FACE in response.json()["detail"]


def test_every_job_runs_in_the_worker_process_itself(
    client, astronaut_jpeg, worker_process, service_settings, redis_client
):
    """(That the model is loaded once for all of them: tests/worker/test_worker.py, in this process.)"""
    from rq import Worker
    from rq.job import Job

    from simpsonize.queue.jobstore import SERIALIZER
    from simpsonize.queue.rq_adapter import WORKER_KEY_PREFIX

    ids = [submit(client, astronaut_jpeg).json()["id"] for _ in range(3)]
    names = set()
    for job_id in ids:
        assert wait_for_job(client, job_id)["status"] == "finished"
        meta = json.loads(redis_client.hget(keys.result_key(service_settings.key_prefix, job_id), "meta"))
        assert meta["worker"] == {"device": "cpu"}
        names.add(Job.fetch(job_id, connection=redis_client, serializer=SERIALIZER).worker_name)
    (name,) = names
    worker = Worker.find_by_key(WORKER_KEY_PREFIX + name, connection=redis_client, serializer=SERIALIZER)
    assert worker.pid == worker_process.pid  # RQ's record of who ran them: the process itself, no forked horse


def _id_bits(job_id: str) -> int:
    import base64

    raw = base64.urlsafe_b64decode(job_id + "==")
    assert len(raw) == 16  # 22 url-safe base64 characters hold 128 bits
    return int.from_bytes(raw, "big")


def test_job_ids_are_random_and_unguessable(idle_client, astronaut_jpeg):
    first = submit(idle_client, astronaut_jpeg).json()["id"]
    second = submit(idle_client, astronaut_jpeg).json()["id"]
    for job_id in (first, second):
        assert len(job_id) == 22 and keys.is_job_id(job_id)
    # Two consecutive uploads share no structure: ~64 of 128 bits differ (a counter or a timestamp differs in a few
    # low bits; fewer than 32 differing bits happens by chance with probability < 1e-8).
    assert bin(_id_bits(first) ^ _id_bits(second)).count("1") >= 32
    # Every one of the 128 bits varies across ids: a counter, a timestamp or a short random part leaves high bits
    # fixed. 2000 ids: each bit is set in 50 % +- 1.1 % (1 sd); the band 40-60 % is over 8 sd wide.
    ids = [_id_bits(keys.new_job_id()) for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for bit in range(128):
        share = sum((value >> bit) & 1 for value in ids) / len(ids)
        assert 0.40 < share < 0.60, f"bit {bit} is set in {share:.0%} of job ids"


def test_queued_job_reports_its_position_and_409s_for_the_result(idle_client, astronaut_jpeg):
    first = submit(idle_client, astronaut_jpeg).json()["id"]
    second = submit(idle_client, astronaut_jpeg).json()["id"]
    state = idle_client.get(f"/api/v1/jobs/{second}").json()
    assert state["status"] == "queued"
    assert state["position"] == 2 and state["queue_length"] == 2
    assert idle_client.get(f"/api/v1/jobs/{first}").json()["position"] == 1
    response = idle_client.get(f"/api/v1/jobs/{first}/result")
    assert response.status_code == 409
    assert "queued" in response.json()["detail"]
    assert idle_client.get(f"/api/v1/jobs/{first}/input").status_code == 409


def test_full_queue_answers_503_with_retry_after(idle_client, astronaut_jpeg, idle_settings):
    for _ in range(idle_settings.max_queue):
        assert submit(idle_client, astronaut_jpeg).status_code == 202
    response = submit(idle_client, astronaut_jpeg)
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(idle_settings.retry_after)
    assert isinstance(response.json()["detail"], str)


def test_unknown_ids_are_404(client):
    unknown = keys.new_job_id()
    for path in (
        f"/api/v1/jobs/{unknown}",
        f"/api/v1/jobs/{unknown}/result",
        f"/api/v1/jobs/{unknown}/input",
        "/api/v1/jobs/not-an-id",
        "/api/v1/jobs/..%2F..%2Fetc",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert isinstance(response.json()["detail"], str)
    assert client.delete(f"/api/v1/jobs/{unknown}").status_code == 404


def _keys_of(redis_client, job_id: str) -> list[str]:
    return sorted(k.decode() for k in redis_client.scan_iter(match=f"*{job_id}*"))


def test_delete_removes_a_finished_job_from_redis(client, astronaut_jpeg, redis_client, service_settings):
    job_id = submit(client, astronaut_jpeg).json()["id"]
    assert wait_for_job(client, job_id)["status"] == "finished"
    assert keys.result_key(service_settings.key_prefix, job_id) in _keys_of(redis_client, job_id)
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    # only the (data-free, expiring) tombstone and the signal that woke long polls are left
    prefix = service_settings.key_prefix
    assert _keys_of(redis_client, job_id) == sorted([keys.deleted_key(prefix, job_id), keys.done_key(prefix, job_id)])
    assert redis_client.lrange(keys.done_key(prefix, job_id), 0, -1) == [b"1"]
    assert redis_client.ttl(keys.deleted_key(service_settings.key_prefix, job_id)) > 0
    assert client.get(f"/api/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/api/v1/jobs/{job_id}/result").status_code == 404
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 404


def test_delete_removes_a_queued_job(idle_client, astronaut_jpeg, redis_client, idle_settings):
    job_id = submit(idle_client, astronaut_jpeg).json()["id"]
    assert keys.input_key(idle_settings.key_prefix, job_id) in _keys_of(redis_client, job_id)
    assert idle_client.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    prefix = idle_settings.key_prefix
    assert _keys_of(redis_client, job_id) == sorted([keys.deleted_key(prefix, job_id), keys.done_key(prefix, job_id)])
    assert job_id not in JobStore(idle_settings, redis_client).queue.get_job_ids()


def test_every_key_the_service_writes_has_a_ttl(client, idle_client, astronaut_jpeg, coffee_jpeg, redis_client):
    done = [submit(client, astronaut_jpeg).json()["id"], submit(client, coffee_jpeg).json()["id"]]
    submit(idle_client, astronaut_jpeg)  # one left queued
    for job_id in done:
        wait_for_job(client, job_id)
    client.get("/readyz")
    names = sorted(k.decode() for k in redis_client.scan_iter())
    assert any(n.startswith("rq:job:") for n in names) and any(n.startswith("simpsonize:result:") for n in names)
    assert any(n.startswith("rq:workers") for n in names) and any(n.startswith("rq:finished:") for n in names)
    without_ttl = [n for n in names if redis_client.ttl(n) < 0]  # -1: no expiry (-2: gone meanwhile is fine)
    assert without_ttl == [], f"keys without a TTL: {without_ttl}"


def test_missing_field_is_422(client):
    response = client.post("/api/v1/jobs", files={"photo": ("a.jpg", b"abc", "image/jpeg")})
    assert response.status_code == 422
    assert "'file'" in response.json()["detail"]
    response = client.post("/api/v1/jobs", json={"file": "abc"})
    assert response.status_code == 422 and isinstance(response.json()["detail"], str)
    response = client.post("/api/v1/jobs", files={"file": ("empty.jpg", b"", "image/jpeg")})
    assert response.status_code == 422


def test_not_an_image_is_415(client, astronaut):
    response = submit(client, b"hello, I am a text file" * 10, "notes.txt", "text/plain")
    assert response.status_code == 415
    assert response.json()["detail"] == "The file is not a JPEG, PNG, WebP, HEIC or AVIF image."
    gif = io.BytesIO()
    astronaut.save(gif, format="GIF")
    assert submit(client, gif.getvalue(), "a.gif", "image/gif").status_code == 415
    jpeg = io.BytesIO()
    astronaut.save(jpeg, format="JPEG")
    truncated = jpeg.getvalue()[: len(jpeg.getvalue()) // 2]
    response = submit(client, truncated)
    assert response.status_code == 415
    assert "damaged" in response.json()["detail"]


def test_too_large_file_is_413(idle_settings, astronaut_jpeg):
    from fastapi.testclient import TestClient

    from simpsonize.web.main import create_app

    small = idle_settings.model_copy(update={"max_upload_bytes": 10_000})
    with TestClient(create_app(small)) as test_client:
        response = submit(test_client, astronaut_jpeg)
    assert response.status_code == 413
    assert response.json()["detail"] == "The photo is larger than 10 KB; please upload a smaller one."


def test_too_many_pixels_is_413(client):
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")  # 400 megapixels in a few KB
    assert len(bomb.getvalue()) < 100_000
    response = submit(client, bomb.getvalue(), "bomb.png", "image/png")
    assert response.status_code == 413
    assert "too many pixels" in response.json()["detail"]


def test_webp_and_png_are_accepted(idle_client, astronaut):
    for fmt in ("WEBP", "PNG"):
        buffer = io.BytesIO()
        astronaut.save(buffer, format=fmt)
        response = submit(idle_client, buffer.getvalue(), f"a.{fmt.lower()}", f"image/{fmt.lower()}")
        assert response.status_code == 202, (fmt, response.text)


def test_health_and_readiness(client, idle_settings):
    from fastapi.testclient import TestClient

    from simpsonize.web.main import create_app

    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    with TestClient(create_app(idle_settings)) as test_client:  # nobody serves this queue
        response = test_client.get("/readyz")
    assert response.status_code == 503 and "worker" in response.json()["detail"]
    unreachable = idle_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(unreachable)) as test_client:
        response = test_client.get("/readyz")
        assert response.status_code == 503 and "Redis" in response.json()["detail"]
        assert test_client.get("/healthz").status_code == 200
        upload = submit(test_client, rgb_png())
        assert upload.status_code == 503 and "retry-after" in upload.headers


def test_openapi_documents_the_api(client):
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/api/v1/jobs"]["post"]
    body = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["format"] == "binary"
    assert {"202", "413", "415", "422", "503"} <= set(post["responses"])
    for path in (
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/result",
        "/api/v1/jobs/{job_id}/input",
        "/healthz",
        "/readyz",
    ):
        assert path in schema["paths"]
    assert "delete" in schema["paths"]["/api/v1/jobs/{job_id}"]
    assert client.get("/docs").status_code == 200


def test_options_and_405_name_every_method_of_the_path(idle_client):
    """Starlette's 405 listed only the first matching route's methods (schemathesis ST205: GET, not DELETE)."""
    response = idle_client.options("/api/v1/jobs/some-job")
    assert response.status_code == 204
    assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "DELETE", "OPTIONS"}
    response = idle_client.put("/api/v1/jobs/some-job")
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "DELETE"}
    assert "PUT is not allowed" in response.json()["detail"]
    response = idle_client.get("/api/v1/jobs")  # the collection takes POST only
    allow = response.headers["allow"]
    assert response.status_code == 405 and "POST" in allow and "DELETE" not in allow
    assert idle_client.get("/api/v1/jobs/nonexistent").status_code == 404  # other errors keep their handler
