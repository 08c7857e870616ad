"""Service fixtures (real Redis, a real worker subprocess): see service_support.py. And what every test here shares:
the `browser` mark, a skip where Debian's `chromium` is not installed, headless Chromium driven by Playwright, and the
astronaut photo as a file to pick."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "web"))

from service_support import *  # noqa: E402,F401,F403

HERE = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by mark
def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.browser)
            if CHROMIUM is None:
                item.add_marker(pytest.mark.skip(reason="chromium is not installed (apt-get install -y chromium)"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield browser
        browser.close()


@pytest.fixture()
def photo(tmp_path, astronaut_jpeg):
    path = tmp_path / "astronaut.jpg"
    path.write_bytes(astronaut_jpeg)
    return path
