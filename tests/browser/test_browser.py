"""End to end in real headless Chromium (Debian's `chromium`, driven by Playwright): upload the astronaut on `/`,
wait for the Simpsonized image, check it loaded; once with JavaScript, once without. Screenshots go to
test-artifacts/. Then what the page sends: a big photo shrunk upright to the service's maximum side, and files it
cannot or need not shrink byte for byte, as the server receives them."""

from __future__ import annotations

import io

import pytest
from service_support import POLL_TIMEOUT, REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts"
TIMEOUT_MS = int(POLL_TIMEOUT * 1000)


@pytest.fixture()
def no_face_photo(tmp_path, coffee_jpeg):
    path = tmp_path / "coffee.jpg"
    path.write_bytes(coffee_jpeg)
    return path


def natural_width(page, selector: str) -> int:
    return page.eval_on_selector(selector, "img => img.complete ? img.naturalWidth : 0")


def test_upload_with_javascript_shows_before_and_after(browser, live_server, photo):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_server + "/")
    page.set_input_files("#file-input", str(photo))  # picking a file uploads it
    page.wait_for_selector("#progress:not([hidden])", timeout=30_000)
    page.wait_for_selector("#result:not([hidden])", timeout=TIMEOUT_MS)
    # Read the property through Playwright's own polling: wait_for_function with a string compiles it with eval()
    # inside the page whenever it has to poll, which the page's CSP (script-src 'self') forbids.
    from playwright.sync_api import expect

    for image in ("#after-image", "#before-image"):
        expect(page.locator(image)).to_have_js_property("complete", True, timeout=30_000)
    assert natural_width(page, "#after-image") == 256
    assert natural_width(page, "#before-image") == 256
    assert page.get_attribute("#download", "href").endswith("/result?download=1")
    assert page.url == live_server + "/"  # all in place
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-js-result.png"), full_page=True)
    assert errors == []
    context.close()


def test_failure_is_explained_with_javascript(browser, live_server, no_face_photo):
    context = browser.new_context()
    page = context.new_page()
    page.goto(live_server + "/")
    page.set_input_files("#file-input", str(no_face_photo))
    page.wait_for_selector("#error:not([hidden])", timeout=TIMEOUT_MS)
    assert "No face found in the photo." in page.inner_text("#error")
    assert page.is_visible("#upload-form")  # ready for another try
    context.close()


def test_upload_without_javascript(browser, live_server, photo):
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.goto(live_server + "/")
    page.set_input_files("#file-input", str(photo))
    with page.expect_navigation():
        page.click("#submit")
    assert "/jobs/" in page.url
    # the job page refreshes itself (meta refresh) until the result is there
    page.wait_for_selector("#after-image", timeout=TIMEOUT_MS)
    page.wait_for_load_state("load")
    assert natural_width(page, "#after-image") == 256
    assert natural_width(page, "#before-image") == 256
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-nojs-result.png"), full_page=True)
    context.close()


def _queued_once(job_requests: list[str], cut_long_polls: bool = False):
    """A route handler that answers the page's first status request with 'queued' (the tiny test model would finish
    before the page asks, and the page long-polls only for a job not yet ended), records every status request, cuts
    the long polls if asked (as a proxy with a short timeout would), and passes everything else on."""
    import json

    def handle(route):
        url = route.request.url
        path = url.split("?")[0]
        if route.request.method != "GET" or path.endswith(("/result", "/input")):
            return route.continue_()
        job_requests.append(url)
        if len(job_requests) == 1:
            job_id = path.rsplit("/", 1)[1]
            return route.fulfill(
                status=200,
                content_type="application/json",
                body=json.dumps(
                    {
                        "id": job_id,
                        "status": "queued",
                        "status_url": f"/api/v1/jobs/{job_id}",
                        "position": 1,
                        "queue_length": 1,
                        "result_url": f"/api/v1/jobs/{job_id}/result",
                        "input_url": f"/api/v1/jobs/{job_id}/input",
                    }
                ),
            )
        if cut_long_polls and "wait=" in url:
            return route.abort()
        return route.fallback()

    return handle


def test_the_page_long_polls_for_the_result(browser, live_server, photo):
    context = browser.new_context()
    page = context.new_page()
    job_requests: list[str] = []
    page.route("**/api/v1/jobs/*", _queued_once(job_requests))
    page.goto(live_server + "/")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#result:not([hidden])", timeout=TIMEOUT_MS)
    assert "?" not in job_requests[0]  # the first answer at once, for the place in line
    assert all("?wait=5" in url for url in job_requests[1:]) and len(job_requests) >= 2, job_requests
    context.close()


def test_the_page_polls_once_a_second_when_long_polls_fail(browser, live_server, photo):
    context = browser.new_context()
    page = context.new_page()
    job_requests: list[str] = []
    page.route("**/api/v1/jobs/*", _queued_once(job_requests, cut_long_polls=True))
    page.goto(live_server + "/")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#result:not([hidden])", timeout=TIMEOUT_MS)
    waited = [url for url in job_requests if "wait=" in url]
    assert len(waited) == 2, job_requests  # two failures, then plain polling
    assert "wait=" not in job_requests[-1]
    context.close()


# -- shrinking in the browser before upload --------------------------------------------------------------------------


class UploadRecorder:
    """ASGI wrapper that records the body of every upload POSTed to the API, exactly as the server receives it, then
    hands the request on unchanged. (Playwright's view of a request body leaves out a picked file sent as it is.)"""

    def __init__(self, app) -> None:
        self.app = app
        self.uploads: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/api/v1/jobs":
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode()

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):  # recorded before the app can answer, so before the page sees it
                    self.uploads.append(_file_part(b"".join(chunks), content_type))
            return message

        await self.app(scope, recording_receive, send)


@pytest.fixture(scope="module")
def recording_server(live_server, service_app):
    """The same app (started by ``live_server``) served on another port through an ``UploadRecorder``: yields
    (base URL, the list of uploads received)."""
    from service_support import served_in_thread

    recorder = UploadRecorder(service_app)
    with served_in_thread(recorder, lifespan="off") as base:
        yield base, recorder.uploads


def _file_part(body: bytes, content_type: str) -> dict:
    """The ``file`` part of a multipart/form-data body, split by hand so its bytes are exactly what was sent."""
    if "boundary=" not in content_type:
        return {"filename": None, "type": None, "data": body}
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = head.decode("utf-8", "replace")
        if 'name="file"' in headers:
            filename = headers.split('filename="', 1)[1].split('"', 1)[0]
            lower = headers.lower()
            part_type = lower.split("content-type:", 1)[1].strip() if "content-type:" in lower else ""
            return {"filename": filename, "type": part_type, "data": data.removesuffix(b"\r\n")}
    return {"filename": None, "type": None, "data": b""}


def _pick_and_wait_for_answer(page, path, status: int = 202) -> None:
    with page.expect_response(
        lambda r: r.url.endswith("/api/v1/jobs") and r.request.method == "POST", timeout=120_000
    ) as answer:
        page.set_input_files("#file-input", str(path))
    assert answer.value.status == status, answer.value.text()


MARKER = (255, 0, 0)


def _sideways_photo(width: int = 4000, height: int = 3000) -> bytes:
    """A grainy photo-like JPEG (about 11.6 MB: over the 10 MB limit, like some 48 MP phone photos) stored
    landscape, width x height, with EXIF orientation 6 (shown rotated 90 degrees clockwise, as phones save portrait
    shots), and a red square in the stored top-left corner: upright, that corner is the top right."""
    from PIL import Image

    from simpsonize.bench.browser_upload import photo_like

    image = photo_like(width, height, grain=70)
    image.paste(Image.new("RGB", (width // 10, width // 10), MARKER), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def _corner_colours(image, size: int) -> dict[str, tuple[float, ...]]:
    """The mean colour of a size x size square in each corner of an RGB image."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), np.float32)
    squares = {
        "top-left": pixels[:size, :size],
        "top-right": pixels[:size, -size:],
        "bottom-left": pixels[-size:, :size],
        "bottom-right": pixels[-size:, -size:],
    }
    return {name: tuple(float(c) for c in square.mean(axis=(0, 1))) for name, square in squares.items()}


def _is_marker(colour) -> bool:
    return all(abs(c - m) <= 12 for c, m in zip(colour, MARKER))


def test_a_big_photo_is_shrunk_upright_before_upload(browser, recording_server, tmp_path):
    """A 4000x3000 photo over the size limit goes up at 1200x1600, upright, as a JPEG named after it; the server
    takes it (202)."""
    from PIL import Image, ImageOps

    original = _sideways_photo()
    path = tmp_path / "IMG_0001.JPG"
    path.write_bytes(original)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(original)))
    assert upright.size == (3000, 4000) and _is_marker(_corner_colours(upright, 100)["top-right"])  # the premise

    context = browser.new_context()
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    base, sent = recording_server
    sent.clear()
    page.goto(base + "/")
    assert page.get_attribute("#upload-form", "data-max-side") == "1600"  # the service's setting, rendered
    assert len(original) > int(page.get_attribute("#upload-form", "data-max-bytes"))  # refused if sent as it is
    _pick_and_wait_for_answer(page, path)
    assert len(sent) == 1
    part = sent[0]
    received = Image.open(io.BytesIO(part["data"]))
    assert (received.format, received.size) == ("JPEG", (1200, 1600))  # portrait, longest side the service's max
    assert received.getexif().get(0x0112, 1) == 1  # upright pixels, nothing left to rotate
    corners = _corner_colours(received, 30)
    assert _is_marker(corners["top-right"]), corners
    assert not any(_is_marker(colour) for name, colour in corners.items() if name != "top-right"), corners
    assert part["filename"] == "IMG_0001.jpg" and part["type"] == "image/jpeg"
    assert len(part["data"]) < len(original) / 4, (len(part["data"]), len(original))
    assert errors == []
    context.close()


def _real_heic(tmp_path, astronaut) -> tuple[object, int]:
    """A real 2048x2048 HEIC (iPhones' format; Chromium cannot decode it, the server can): the page sends it as it
    is and the server takes it (202)."""
    import pillow_heif  # noqa: F401  (registers HEIF with Pillow; a dependency of the service)

    path = tmp_path / "IMG_0002.HEIC"
    astronaut.resize((2048, 2048)).save(path, format="HEIF", quality=70)
    return path, 202


def _damaged_heic(tmp_path, astronaut) -> tuple[object, int]:
    """Random bytes named .heic: nobody can decode them; the page sends them as they are and the server says 415."""
    import random

    path = tmp_path / "broken.heic"
    path.write_bytes(random.Random(7).randbytes(300_000))
    return path, 415


def _small_jpeg(tmp_path, astronaut) -> tuple[object, int]:
    """A photo no bigger than the service keeps (512x512): nothing to gain by re-encoding it."""
    path = tmp_path / "small.jpeg"
    astronaut.save(path, format="JPEG", quality=90)
    return path, 202


@pytest.mark.parametrize(
    "make", [_real_heic, _damaged_heic, _small_jpeg], ids=["real-heic", "damaged-heic", "small-jpeg"]
)
def test_files_not_worth_or_not_possible_to_shrink_are_sent_unchanged(
    browser, recording_server, tmp_path, astronaut, make
):
    """What the browser cannot decode, and photos no bigger than the service keeps, arrive byte for byte."""
    path, status = make(tmp_path, astronaut)
    context = browser.new_context()
    page = context.new_page()
    base, sent = recording_server
    sent.clear()
    page.goto(base + "/")
    _pick_and_wait_for_answer(page, path, status)
    assert len(sent) == 1
    assert sent[0]["data"] == path.read_bytes()
    assert sent[0]["filename"] == path.name
    if status != 202:
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert "image" in page.inner_text("#error")
    context.close()
