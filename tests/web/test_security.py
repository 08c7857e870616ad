"""Security (issue 9): bounded decoding, bounded uploads, per-client limits, no pickles in Redis, headers and
cross-site requests, proxies and hosts. Real Redis throughout; the worker only where a job must really run."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import pickle
import re
import socket
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFile
from service_support import free_port, make_settings, wait_for_job

from simpsonize.queue import keys
from simpsonize.queue.jobstore import JobStore, connect
from simpsonize.web.guard import client_key
from simpsonize.web.main import create_app
from simpsonize.web.uploads import UploadError, normalise


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def face_like(size=(160, 160)) -> bytes:
    """A small valid photo (no face needed: these jobs stay queued)."""
    image = Image.new("RGB", size, (200, 170, 140))
    ImageDraw.Draw(image).ellipse((30, 20, 130, 140), fill=(230, 190, 150))
    return png(image, "JPEG")


def upload(client, data: bytes | None = None, headers: dict | None = None, path: str = "/api/v1/jobs"):
    return client.post(
        path,
        files={"file": ("a.jpg", data or face_like(), "image/jpeg")},
        headers=headers or {},
        follow_redirects=False,
    )


@pytest.fixture()
def app_for(redis_url, redis_client):
    """create_app with test settings (a fresh queue no worker serves); queues are emptied afterwards."""
    made = []

    def build(**overrides):
        settings = make_settings(redis_url, **overrides)
        made.append(settings)
        return create_app(settings)

    yield build
    for settings in made:
        store = JobStore(settings, redis_client)
        for job_id in store.queue.get_job_ids():
            store.delete(job_id)


# -- 1. bounded decoding -------------------------------------------------------------------------------------------


@pytest.fixture()
def new_images(monkeypatch):
    """Record the size of every image Pillow creates from here on (each conversion, copy, crop, resize, new)."""
    sizes: list[tuple[int, int]] = []
    original = Image.Image._new

    def recording(self, im):
        sizes.append(im.size)
        return original(self, im)

    monkeypatch.setattr(Image.Image, "_new", recording)
    return sizes


def transparent(mode: str, size=(2400, 1800)) -> Image.Image:
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((400, 200, 2000, 1600), fill=(220, 180, 40, 255))
    if mode == "P":
        return image.convert("P")  # keeps the transparent colour as a palette entry
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_image_is_shrunk_without_a_full_size_copy(new_images, mode):
    source = transparent(mode)
    data = png(source)
    new_images.clear()
    out = normalise(data, max_pixels=50_000_000, max_side=400)
    full = source.width * source.height
    # Before: exif_transpose copy, RGBA background, composite and RGB conversion, each full size (4 copies).
    big = [size for size in new_images if size[0] * size[1] > full // 8]
    assert big == [], f"full-size copies made while normalising: {big}"
    result = np.asarray(Image.open(io.BytesIO(out.jpeg)))
    assert (out.width, out.height) == (400, 300)
    assert result[5, 5].min() > 240  # transparent corner flattened onto white
    assert abs(int(result[150, 200].mean()) - int(np.mean(source.convert("RGBA").getpixel((1200, 900))[:3]))) < 60


def test_shrinking_in_strips_matches_one_whole_resize():
    from simpsonize.web.uploads import shrink_to_rgb

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (1201, 1603, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    reference = Image.new("RGB", image.size, (255, 255, 255))
    reference.paste(image, mask=image)  # the old way: flatten the whole image, then one resize
    out = shrink_to_rgb(image, 400)
    reference = reference.resize(out.size, Image.LANCZOS)
    difference = np.abs(np.asarray(out, int) - np.asarray(reference, int))
    assert out.size == (400, 300) and difference.max() <= 1  # rounding only: no seams between strips


def test_jpeg_is_decoded_at_a_reduced_scale(monkeypatch):
    decoded = []
    original = ImageFile.ImageFile.load

    def load(self):
        result = original(self)
        decoded.append(self.size)
        return result

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    data = png(Image.new("RGB", (4000, 3000), (90, 120, 200)), "JPEG")
    out = normalise(data, max_pixels=50_000_000, max_side=400)
    assert (out.width, out.height) == (400, 300)
    assert decoded and all(w <= 800 and h <= 600 for w, h in decoded), decoded  # 1/8 scale, not 1/4 or full


def test_formats_without_reduced_decode_have_a_lower_pixel_limit():
    limits = dict(max_pixels=4_000_000, max_side=400, max_pixels_full_decode=1_000_000)
    big = Image.new("RGB", (1500, 1000), (10, 200, 10))  # 1.5 megapixels
    assert normalise(png(big, "JPEG"), **limits).width == 400
    for fmt in ("PNG", "WEBP"):
        with pytest.raises(UploadError) as error:
            normalise(png(big, fmt), **limits)
        assert error.value.status_code == 413
        assert "1 megapixels for" in error.value.detail and "4 for JPEG" in error.value.detail


def test_decoding_is_bounded_to_the_decoder_count(app_for, monkeypatch):
    """Eight uploads at once: never more than ``decode_concurrency`` images decoded at the same time."""
    import simpsonize.web.deps

    def slow_normalise(*args, **kwargs):
        time.sleep(0.3)  # hold the decoder long enough for the other uploads to pile up
        return normalise(*args, **kwargs)

    monkeypatch.setattr(simpsonize.web.deps, "normalise", slow_normalise)
    application = app_for(decode_concurrency=2, max_queue=50)

    async def burst():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await asyncio.gather(
                *(client.post("/api/v1/jobs", files={"file": ("a.jpg", face_like())}) for _ in range(8))
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [202] * 8
    assert application.state.upload_gate.peak_decoding == 2  # two at once happened, three never did


# -- 2. bounded connections ----------------------------------------------------------------------------------------


def _stalled_upload_body(release: asyncio.Event):
    boundary = "stall"

    async def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        await release.wait()
        yield face_like() + f"\r\n--{boundary}--\r\n".encode()

    return body(), {"content-type": f"multipart/form-data; boundary={boundary}"}


def test_uploads_in_progress_are_limited(app_for):
    application = app_for(max_uploads_in_progress=1, max_queue=50)

    async def scenario():
        release = asyncio.Event()
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            body, headers = _stalled_upload_body(release)
            slow = asyncio.create_task(client.post("/api/v1/jobs", content=body, headers=headers))
            while application.state.upload_gate.in_progress < 1:
                await asyncio.sleep(0.01)
            second = await client.post("/api/v1/jobs", files={"file": ("b.jpg", face_like())})
            release.set()
            return second, await slow

    second, first = asyncio.run(scenario())
    assert second.status_code == 503 and second.headers["retry-after"]
    assert "too many photos" in second.json()["detail"]
    assert first.status_code == 202  # the upload that held the slot was not disturbed


def test_a_body_that_arrives_too_slowly_gets_408(app_for):
    application = app_for(upload_timeout=0.5, max_queue=50)

    async def scenario():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            body, headers = _stalled_upload_body(asyncio.Event())  # never released
            return await client.post("/api/v1/jobs", content=body, headers=headers)

    response = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert response.status_code == 408
    assert "took longer than" in response.json()["detail"]
    assert application.state.upload_gate.in_progress == 0  # the slot was given back


def test_slow_loris_over_a_real_socket_is_answered_408(app_for):
    """Through uvicorn, with the options `simpsonize serve` uses: a client that stops sending mid-body."""
    import uvicorn

    from simpsonize.serve.launcher import uvicorn_options

    application = app_for(upload_timeout=1.0)
    port = free_port()
    options = uvicorn_options(application.state.settings)
    assert options["proxy_headers"] is False and options["limit_concurrency"] >= 1
    assert options["access_log"] is False  # URLs with job ids stay out of the logs
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            head = (
                b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n"
            )
            sock.sendall(head)  # ...and nothing more
            started = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - started < 15
    finally:
        server.should_exit = True
        thread.join(10)


# -- 3. per-client limits -------------------------------------------------------------------------------------------


def test_rate_limit_answers_429_and_ignores_forwarded_for_from_untrusted_peers(app_for):
    application = app_for(rate_limit="3/minute", max_queued_per_client=50, max_queue=50)
    with TestClient(application) as client:
        for i in range(3):  # spoofed addresses from a peer that is not a trusted proxy: all one client
            assert upload(client, headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code == 202
        response = upload(client, headers={"X-Forwarded-For": "203.0.113.99"})
    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.json()["detail"].startswith("Too many uploads from your address: the limit is 3 photos per minute")


def test_rate_limit_counts_forwarded_clients_separately_behind_a_trusted_proxy(app_for):
    application = app_for(rate_limit="2/minute", forwarded_allow_ips="testclient", max_queue=50)
    with TestClient(application) as client:
        for address in ("198.51.100.1", "198.51.100.2", "2001:db8::1"):
            for _ in range(2):
                assert upload(client, headers={"X-Forwarded-For": address}).status_code == 202, address
        assert upload(client, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 429
        # the same IPv6 /64 is one client: a rotated interface id does not reset the limit
        assert upload(client, headers={"X-Forwarded-For": "2001:db8::beef"}).status_code == 429


def test_the_upload_form_answers_429_too(app_for):
    application = app_for(rate_limit="1/minute", max_queue=50)
    with TestClient(application) as client:
        assert upload(client, path="/jobs").status_code == 303
        response = upload(client, path="/jobs")
    assert response.status_code == 429 and response.headers["retry-after"]
    assert "Too many uploads from your address" in response.text and 'id="upload-form"' in response.text


def test_each_client_has_a_cap_on_jobs_waiting(app_for):
    application = app_for(
        rate_limit="100/minute", max_queued_per_client=2, forwarded_allow_ips="testclient", max_queue=50, retry_after=9
    )
    alice, bob = {"X-Forwarded-For": "192.0.2.1"}, {"X-Forwarded-For": "192.0.2.2"}
    with TestClient(application) as client:
        first = upload(client, headers=alice).json()["id"]
        assert upload(client, headers=alice).status_code == 202
        refused = upload(client, headers=alice)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "9"
        assert "You already have 2 photos waiting" in refused.json()["detail"]
        assert upload(client, headers=bob).status_code == 202  # other clients are not affected
        assert client.delete(f"/api/v1/jobs/{first}").status_code == 204  # one of Alice's jobs is gone...
        assert upload(client, headers=alice).status_code == 202  # ...so she has a place again


def test_parallel_uploads_from_one_client_cannot_pass_the_cap_together(app_for):
    application = app_for(rate_limit="100/minute", max_queued_per_client=2, max_queue=50)

    async def burst():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await asyncio.gather(
                *(client.post("/api/v1/jobs", files={"file": ("a.jpg", face_like())}) for _ in range(6))
            )

    codes = sorted(r.status_code for r in asyncio.run(burst()))
    assert codes == [202, 202, 429, 429, 429, 429]


def test_per_client_keys_expire_and_hold_no_address(app_for, redis_client):
    application = app_for(rate_limit="5/minute", forwarded_allow_ips="testclient", max_queue=50)
    with TestClient(application) as client:
        assert upload(client, headers={"X-Forwarded-For": "198.51.100.77"}).status_code == 202
    names = [n.decode() for n in redis_client.scan_iter("simpsonize:*") if b":ratelimit" in n or b":client:" in n]
    assert any(":ratelimit" in n for n in names) and any(":client:" in n for n in names)
    assert all(redis_client.ttl(n) > 0 for n in names), names
    assert not any("198.51.100.77" in n for n in names)  # only a hash of the address is stored


def test_rate_limit_off_turns_both_limits_off(app_for):
    application = app_for(rate_limit="off", max_queued_per_client=1, max_queue=50)
    with TestClient(application) as client:
        assert [upload(client).status_code for _ in range(3)] == [202, 202, 202]


def test_client_keys():
    assert client_key("198.51.100.7") == "198.51.100.7"
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert client_key(None) == "unknown"


# -- 4. Redis holds no code ------------------------------------------------------------------------------------------


def _blobs(redis_client, name: bytes):
    kind = redis_client.type(name).decode()
    if kind == "string":
        yield redis_client.get(name)
    elif kind == "hash":
        yield from redis_client.hvals(name)
    elif kind == "list":
        yield from redis_client.lrange(name, 0, -1)
    elif kind in ("set",):
        yield from redis_client.smembers(name)
    elif kind == "zset":
        yield from redis_client.zrange(name, 0, -1)
    elif kind == "stream":
        for _, fields in redis_client.xrange(name):
            yield from fields.values()


def _decodings(blob: bytes):
    """The blob as stored and as RQ may wrap it (zlib for job data, base64 for results)."""
    yield blob
    for decode in (zlib.decompress, lambda b: base64.b64decode(b, validate=True)):
        try:
            inner = decode(blob)
        except Exception:
            continue
        yield inner
        try:
            yield zlib.decompress(inner)
        except Exception:
            pass


def is_pickle(data) -> bool:
    return isinstance(data, bytes) and len(data) > 2 and data[0] == 0x80 and 2 <= data[1] <= 5


def test_no_key_the_service_writes_holds_a_pickle(client, idle_client, astronaut_jpeg, coffee_jpeg, redis_client):
    done = [upload(client, astronaut_jpeg).json()["id"], upload(client, coffee_jpeg).json()["id"]]
    upload(idle_client, astronaut_jpeg)  # one left queued
    states = [wait_for_job(client, job_id)["status"] for job_id in done]
    assert states == ["finished", "failed"]
    pickles = []
    for name in redis_client.scan_iter():
        for blob in _blobs(redis_client, name):
            if any(is_pickle(candidate) for candidate in _decodings(blob)):
                pickles.append(name.decode())
    assert any(n.startswith("rq:job:") for n in map(bytes.decode, redis_client.scan_iter()))
    assert pickles == [], f"pickled values in Redis: {sorted(set(pickles))}"


class _Marker:
    """Unpickling this would write a file: the web process must never do it."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_planted_in_redis_is_never_unpickled(idle_client, idle_settings, redis_client, tmp_path):
    job_id = upload(idle_client).json()["id"]
    marker = tmp_path / "pwned"
    _Marker.path = str(marker)
    payload = pickle.dumps(_Marker())
    redis_client.hset(f"rq:job:{job_id}", mapping={"meta": payload, "status": "failed"})
    response = idle_client.get(f"/api/v1/jobs/{job_id}")
    assert response.status_code in (200, 404)
    if response.status_code == 200:
        assert response.json()["status"] == "failed"
    assert not marker.exists(), "the web process unpickled data from Redis"


# -- 5/6. hosts, headers, cross-site ---------------------------------------------------------------------------------


def test_pages_send_security_headers(client):
    for path in ("/", "/api/v1/jobs/" + keys.new_job_id(), "/healthz", "/static/style.css"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "no-referrer", path
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path


def test_pages_have_no_inline_script(client):
    html = client.get("/").text
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers either


def test_docs_have_their_own_policy_with_the_inline_script_by_hash(client):
    response = client.get("/docs")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    scripts = re.findall(r"<script>(.*?)</script>", response.text, re.S)
    assert scripts
    for script in scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp


def test_urls_in_pages_do_not_come_from_the_host_header(client):
    html = client.get("/", headers={"Host": "evil.example"}).text
    assert "evil.example" not in html
    assert 'href="/static/style.css"' in html and 'src="/static/app.js"' in html


def test_allowed_hosts_refuse_other_host_headers(app_for):
    with TestClient(app_for(allowed_hosts="photos.example.org"), base_url="http://photos.example.org") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 400
        assert client.get("/healthz", headers={"Host": "127.0.0.1:8000"}).status_code == 200  # the healthcheck


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "photos.example.org.evil.example",
        "example.net",
        "",
        "photos.example.org:x",
        "[::1",
        "[not:ipv6]:80",
        "a b",
    ],
)
def test_a_refused_host_gets_a_json_sentence_like_every_other_error(app_for, host):
    from simpsonize.web.http_security import BAD_HOST

    with TestClient(app_for(allowed_hosts="photos.example.org,*.example.net")) as client:
        response = client.get("/healthz", headers={"Host": host})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": BAD_HOST}


@pytest.mark.parametrize(
    "host",
    [
        "photos.example.org",
        "PHOTOS.Example.org:8443",
        "a.example.net",
        "localhost:8000",
        "127.0.0.1",
        "[::1]:8000",
        "[0:0::1]",
    ],
)
def test_allowed_hosts_match_any_port_case_subdomain_patterns_and_ipv6_literals(app_for, host):
    with TestClient(app_for(allowed_hosts="photos.example.org,*.example.net")) as client:
        assert client.get("/healthz", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ],
    ids=["sec-fetch-cross-site", "sec-fetch-same-site", "origin", "null-origin"],
)
def test_cross_site_form_posts_are_refused(app_for, headers):
    with TestClient(app_for(max_queue=50)) as client:
        job_id = upload(client).json()["id"]
        response = upload(client, headers=headers, path="/jobs")
        assert response.status_code == 403
        assert "another web site" in response.json()["detail"]
        deleted = client.post(f"/jobs/{job_id}/delete", headers=headers, follow_redirects=False)
        assert deleted.status_code == 403
        assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200  # still there
        assert upload(client, headers=headers).status_code == 403  # the REST API too, without a CORS allowance


def test_same_origin_form_posts_pass(app_for):
    with TestClient(app_for(max_queue=50)) as client:
        same = {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}
        response = upload(client, headers=same, path="/jobs")
        assert response.status_code == 303
        job_id = response.headers["location"].rsplit("/", 1)[1]
        assert client.post(f"/jobs/{job_id}/delete", headers=same, follow_redirects=False).status_code == 303
        assert upload(client, headers={"Origin": "http://testserver"}, path="/jobs").status_code == 303
        assert upload(client, path="/jobs").status_code == 303  # no browser headers at all (curl)


def test_cors_allow_list_for_the_rest_api(app_for):
    friend, stranger = "https://friend.example", "https://stranger.example"
    with TestClient(app_for(max_queue=50)) as client:  # default: same origin only
        preflight = client.options("/api/v1/jobs", headers={"Origin": friend, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
    with TestClient(app_for(max_queue=50, cors_origins=friend)) as client:
        preflight = client.options("/api/v1/jobs", headers={"Origin": friend, "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == friend
        cross = {"Origin": friend, "Sec-Fetch-Site": "cross-site"}
        response = upload(client, headers=cross)
        assert response.status_code == 202 and response.headers["access-control-allow-origin"] == friend
        assert upload(client, headers={"Origin": stranger, "Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert upload(client, headers=cross, path="/jobs").status_code == 403  # forms: never cross-site


# -- 8. privacy ------------------------------------------------------------------------------------------------------


def test_the_page_says_what_is_kept_and_for_how_long(client, service_settings):
    footer = " ".join(client.get("/").text.split("<footer>", 1)[1].split())
    minutes = round(service_settings.result_ttl / 60)
    assert "photo you upload is deleted" in footer
    # the composite (issue 28) is kept exactly as long as the crops and drawings
    assert f"face crops, their drawings and your photo with the drawn heads are kept for {minutes} minutes" in footer


# -- 7. deployment defaults of the embedded service -----------------------------------------------------------------


def test_embedded_data_dir_is_private_and_must_be_ours(tmp_path, monkeypatch):
    import os
    import stat

    from simpsonize.serve.embedded import DataDirUnsafe, secure_data_dir

    fresh = tmp_path / "fresh" / "data"
    secure_data_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    secure_data_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    real = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: real + 1)  # as if someone else had made the directory
    with pytest.raises(DataDirUnsafe, match="belongs to user id"):
        secure_data_dir(loose)


def test_a_full_embedded_redis_refuses_uploads_and_evicts_nothing():
    import shutil
    import tempfile

    from redis.exceptions import OutOfMemoryError

    from simpsonize.serve.embedded import EmbeddedRedis

    directory = tempfile.mkdtemp(prefix="szf-")  # short: unix socket path limit
    try:
        with EmbeddedRedis(directory, maxmemory="64mb") as server:
            redis = connect(server.url)
            assert redis.config_get("maxmemory")["maxmemory"] == str(64 * 1024 * 1024)
            assert redis.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            for i in range(20):
                redis.set(f"filler:{i}", b"x" * 100_000)
            redis.config_set("maxmemory", 1024 * 1024)  # now well below what is used: Redis is full
            with pytest.raises(OutOfMemoryError):
                redis.set("one-more", b"x")
            with TestClient(create_app(make_settings(server.url, max_queue=50))) as client:
                response = upload(client)
            assert response.status_code == 503 and int(response.headers["retry-after"]) >= 60
            # admission by memory (app/capacity.py) refuses before Redis is asked to store anything
            assert response.json()["detail"] == "The service is busy; try again in a minute."
            assert sum(1 for _ in redis.scan_iter("filler:*")) == 20  # noeviction: nothing was dropped
            redis.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_cpu_count_follows_the_cgroup_quota(tmp_path):
    from simpsonize.cpu import available_cpus, cgroup_quota

    (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: 1.5 CPUs
    assert cgroup_quota(tmp_path) == 1.5
    assert available_cpus(tmp_path) == min(2, available_cpus(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(v1) == 1.0 and available_cpus(v1) == 1


def test_worker_health_check_sees_only_live_workers_of_its_host(redis_url):
    import socket as sockets

    from rq import Worker

    from simpsonize.worker.process import check, default_name

    settings = make_settings(redis_url)
    store = JobStore(settings, connect(redis_url))
    assert check(redis_url, settings.queue_name, 10) == 1  # nobody there
    other = Worker([store.queue], connection=store.redis, name="another-host-1-abcdef")
    other.register_birth()
    other.heartbeat()
    assert check(redis_url, settings.queue_name, 10) == 1  # alive, but not on this host
    name = default_name()
    assert name.startswith(sockets.gethostname() + "-") and name != default_name()  # unique per start
    ours = Worker([store.queue], connection=store.redis, name=name)
    ours.register_birth()
    ours.heartbeat()
    try:
        assert check(redis_url, settings.queue_name, 10) == 0
        ours.register_death()
        assert check(redis_url, settings.queue_name, 10) == 1  # dead workers do not count
    finally:
        other.register_death()
    assert check("redis://127.0.0.1:1/0", settings.queue_name, 10) == 1  # Redis away: unhealthy, no traceback


def test_a_redis_that_stops_answering_fails_fast_instead_of_hanging(monkeypatch):
    """A server that accepts connections and then says nothing (a hung or half-dead Redis): without a socket
    timeout every request would hang on it forever."""
    from redis.exceptions import TimeoutError as RedisTimeout

    import simpsonize.queue.jobstore

    monkeypatch.setattr(simpsonize.queue.jobstore, "SOCKET_TIMEOUT", 0.3)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(silent.accept()) for _ in range(8)], daemon=True).start()
    try:
        client = connect(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        started = time.monotonic()
        with pytest.raises(RedisTimeout):
            client.ping()
        assert time.monotonic() - started < 10  # a few retries of 0.3 s, not forever
    finally:
        for conn, _ in accepted:
            conn.close()
        silent.close()
