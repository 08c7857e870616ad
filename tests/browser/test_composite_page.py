"""The result page in real Chromium: the composite with its before/after slider (keyboard and touch), the faces,
both downloads, a 390x844 phone viewport, the page without JavaScript, and axe-core's WCAG 2.1 AA and best-practice
rules on the home page and a result page, at both sizes (axe-playwright-python bundles axe-core)."""

from __future__ import annotations

import io

from PIL import Image
from service_support import POLL_TIMEOUT, REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts"
TIMEOUT_MS = int(POLL_TIMEOUT * 1000)
DESKTOP = {"width": 1000, "height": 900}
PHONE = {"width": 390, "height": 844}
AXE_RULES = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}}


def axe_violations(page) -> str:
    """axe-core's violations of the page as it is now, one line each ('' when none)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options=AXE_RULES)
    return results.generate_snapshot() if results.violations_count else ""


def new_page(browser, **options):
    # bypass_csp: axe is injected as a script, which the page's policy (script-src 'self') would refuse.
    context = browser.new_context(bypass_csp=True, **options)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return context, page, errors


def loaded(page, selector: str) -> int:
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_have_js_property("complete", True, timeout=30_000)
    return page.eval_on_selector(selector, "img => img.naturalWidth")


def split(page) -> str:
    return page.eval_on_selector("#compare", "el => el.style.getPropertyValue('--split')")


def upload(page, live_server, photo):
    page.goto(live_server + "/")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#result:not([hidden])", timeout=TIMEOUT_MS)


def test_home_page_examples_and_accessibility(browser, live_server):
    for viewport in (DESKTOP, PHONE):
        context, page, errors = new_page(browser, viewport=viewport)
        page.goto(live_server + "/")
        assert page.locator("h1").count() == 1
        assert axe_violations(page) == "", viewport
        assert page.evaluate("document.scrollingElement.scrollWidth") <= viewport["width"]  # no sideways scroll
        assert errors == []
        context.close()


def test_desktop_result_slider_faces_downloads_and_accessibility(browser, live_server, photo):
    context, page, errors = new_page(browser, viewport=DESKTOP, accept_downloads=True)
    upload(page, live_server, photo)
    assert loaded(page, "#composite-image") == 512  # the whole photo, not the 256 px face
    assert loaded(page, "#photo-image") == 512  # the photo as sent, under the slider
    assert loaded(page, "#after-image") == 256 and loaded(page, "#before-image") == 256
    assert page.get_attribute("#composite-image", "src").endswith("/composite?format=jpeg")

    # The slider: a range input, so the keyboard moves it; it moves the split.
    assert split(page) == "50%"
    page.focus("#compare-slider")
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    assert page.input_value("#compare-slider") == "40" and split(page) == "40%"
    page.keyboard.press("End")
    assert split(page) == "100%"
    assert "100 % your photo" in page.get_attribute("#compare-slider", "aria-valuetext")

    # Both downloads: the lossless composite and the drawn face, as PNGs.
    for link, size in (("#download-composite", (512, 512)), ("#download", (256, 256))):
        with page.expect_download() as info:
            page.click(link)
        download = info.value
        assert download.suggested_filename.endswith(".png")
        with open(download.path(), "rb") as file:
            image = Image.open(io.BytesIO(file.read()))
            assert image.format == "PNG" and image.size == size

    assert page.locator("h1").count() == 1
    assert axe_violations(page) == ""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-composite-desktop.png"), full_page=True)

    # The job's own page (what a reload or a shared link shows) passes too.
    job_id = page.eval_on_selector("#download-composite", "a => a.href").split("/jobs/")[1].split("/")[0]
    page.goto(f"{live_server}/jobs/{job_id}")
    assert loaded(page, "#composite-image") == 512
    assert page.locator("h1").count() == 1
    assert axe_violations(page) == ""
    assert errors == []
    context.close()


def test_phone_viewport_touch_slider_and_accessibility(browser, live_server, photo):
    context, page, errors = new_page(browser, viewport=PHONE, has_touch=True, is_mobile=True, device_scale_factor=2)
    upload(page, live_server, photo)
    assert loaded(page, "#composite-image") == 512
    box = page.locator("#compare-slider").bounding_box()
    assert box["width"] > 200 and box["height"] >= 24  # big enough for a thumb
    page.touchscreen.tap(box["x"] + box["width"] * 0.1, box["y"] + box["height"] / 2)
    assert int(page.input_value("#compare-slider")) < 25  # a tap moves the split there
    assert split(page) == page.input_value("#compare-slider") + "%"
    image = page.locator("#composite-image").bounding_box()
    assert image["width"] <= PHONE["width"]  # the composite fits the screen
    assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    assert axe_violations(page) == ""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-composite-phone.png"), full_page=True)
    job_id = page.eval_on_selector("#download-composite", "a => a.href").split("/jobs/")[1].split("/")[0]
    page.goto(f"{live_server}/jobs/{job_id}")
    assert axe_violations(page) == ""
    assert errors == []
    context.close()


def test_without_javascript_the_job_page_shows_the_composite(browser, live_server, photo):
    context = browser.new_context(java_script_enabled=False, viewport=PHONE)
    page = context.new_page()
    page.goto(live_server + "/")
    page.set_input_files("#file-input", str(photo))
    with page.expect_navigation():
        page.click("#submit")
    page.wait_for_selector("#composite-image", timeout=TIMEOUT_MS)  # once the self-refreshing page has it
    page.wait_for_load_state("load")
    assert page.eval_on_selector("#composite-image", "img => img.naturalWidth") == 512
    assert page.get_attribute("#download-composite", "href").endswith("/composite?download=1")
    assert page.get_attribute("#download", "href").endswith("/result?download=1")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-composite-nojs.png"), full_page=True)
    context.close()
