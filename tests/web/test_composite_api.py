"""The composite and a group photo's faces over the REST API, against a real Redis and worker (tiny weights)."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from service_support import png_size, wait_for_job

from simpsonize.queue import keys


def submit(client, data: bytes):
    return client.post("/api/v1/jobs", files={"file": ("photo.jpg", data, "image/jpeg")})


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pair_jpeg(astronaut) -> bytes:
    """Two different faces side by side (the astronaut, public domain, and skimage's cameraman, CC0)."""
    from skimage import data

    pair = Image.new("RGB", (1536, 768))
    pair.paste(astronaut.resize((768, 768), Image.LANCZOS), (0, 0))
    pair.paste(Image.fromarray(data.camera()).convert("RGB").resize((768, 768), Image.LANCZOS), (768, 0))
    return jpeg(pair)


def test_a_finished_job_has_its_composite(client, astronaut_jpeg):
    job_id = submit(client, astronaut_jpeg).json()["id"]
    state = wait_for_job(client, job_id)
    assert state["status"] == "finished"
    assert state["face_count"] == 1
    assert state["composite_url"] == f"/api/v1/jobs/{job_id}/composite"

    png = client.get(state["composite_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png_size(png.content) == (512, 512)  # the photo's own size
    light = client.get(state["composite_url"], params={"format": "jpeg"})
    assert light.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(light.content)).size == (512, 512)
    assert len(light.content) < len(png.content)
    download = client.get(state["composite_url"], params={"download": 1})
    assert download.headers["content-disposition"].startswith("attachment")
    assert download.headers["content-disposition"].endswith('.png"')

    # /result keeps its meaning: face 1, also as ?face=1; there is no face 2
    assert client.get(state["result_url"], params={"face": 1}).content == client.get(state["result_url"]).content
    missing = client.get(state["result_url"], params={"face": 2})
    assert missing.status_code == 404 and "1 face" in missing.json()["detail"]
    assert client.get(state["result_url"], params={"face": 0}).status_code == 422


def test_a_group_photo_gives_every_face(client, pair_jpeg):
    job_id = submit(client, pair_jpeg).json()["id"]
    state = wait_for_job(client, job_id)
    assert state["status"] == "finished", state
    assert state["face_count"] == 2 and state["faces_found"] == 2
    drawings = [client.get(state["result_url"], params={"face": n}) for n in (1, 2)]
    crops = [client.get(state["input_url"], params={"face": n}) for n in (1, 2)]
    for response in drawings:
        assert response.status_code == 200 and png_size(response.content) == (256, 256)
    for response in crops:  # previews: JPEGs
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.content)).size == (256, 256)
    assert drawings[0].content != drawings[1].content and crops[0].content != crops[1].content
    assert "face2-" in drawings[1].headers["content-disposition"]
    assert png_size(client.get(state["composite_url"]).content) == (1536, 768)


def test_delete_removes_the_composite(client, astronaut_jpeg, redis_client, service_settings):
    job_id = submit(client, astronaut_jpeg).json()["id"]
    state = wait_for_job(client, job_id)
    result_key = keys.result_key(service_settings.key_prefix, job_id)
    assert redis_client.hexists(result_key, "composite") and redis_client.hexists(result_key, "composite_jpeg")
    assert 0 < redis_client.ttl(result_key) <= service_settings.result_ttl  # the same TTL as the drawing
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    assert not redis_client.exists(result_key)
    assert client.get(state["composite_url"]).status_code == 404
    assert client.get(state["composite_url"], params={"format": "jpeg"}).status_code == 404


def test_openapi_lists_the_composite_and_the_face_count(client):
    schema = client.get("/openapi.json").json()
    composite = schema["paths"]["/api/v1/jobs/{job_id}/composite"]["get"]
    assert {"image/png", "image/jpeg"} <= set(composite["responses"]["200"]["content"])
    assert {p["name"] for p in composite["parameters"]} >= {"format", "download"}
    for path in ("/api/v1/jobs/{job_id}/result", "/api/v1/jobs/{job_id}/input"):
        assert "face" in {p["name"] for p in schema["paths"][path]["get"]["parameters"]}
    state = schema["components"]["schemas"]["JobState"]["properties"]
    assert {"face_count", "faces_found", "composite_url"} <= set(state)
