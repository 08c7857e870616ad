"""End to end in real headless Chromium (Debian's `chromium`, driven by Playwright): upload the astronaut on `/`,
wait for the Simpsonized image, check it loaded; once with JavaScript, once without. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import shutil

import pytest

from service_support import POLL_TIMEOUT, REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO_ROOT / "test-artifacts"
TIMEOUT_MS = int(POLL_TIMEOUT * 1000)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


@pytest.fixture()
def photo(tmp_path, astronaut_jpeg):
    path = tmp_path / "astronaut.jpg"
    path.write_bytes(astronaut_jpeg)
    return path


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
    page.wait_for_function("document.getElementById('after-image').complete && "
                           "document.getElementById('before-image').complete", timeout=30_000)
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
            return route.fulfill(status=200, content_type="application/json", body=json.dumps({
                "id": job_id, "status": "queued", "status_url": f"/api/v1/jobs/{job_id}", "position": 1,
                "queue_length": 1, "result_url": f"/api/v1/jobs/{job_id}/result",
                "input_url": f"/api/v1/jobs/{job_id}/input"}))
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
