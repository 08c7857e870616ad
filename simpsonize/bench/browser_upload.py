"""Bytes sent and upload time of a 12 MP phone photo from the upload page, as it is and shrunk in the browser.

Starts `simpsonize serve --workers 0` (embedded Redis and the web process; jobs just queue, then are deleted) from a
checkout (this one, or ``--repo``), opens `/` in headless Chromium (Debian's `chromium`, through Playwright) with
its network emulated by CDP (`Network.emulateNetworkConditions`: ``--upload-mbit`` up, default 10 Mbit/s, and
``--latency-ms``), picks a photo-like 4000x3000 JPEG (about 5 MB: see ``photo_like``) and measures, ``--repeat``
times each:

* original: the page without ``data-max-side`` (as before shrinking existed: the file goes up as it is);
* shrunk: the page as served (decoded, scaled to the service's maximum side on a canvas, sent as JPEG 0.92).

Columns: bytes of the request body as sent (its Content-Length: the photo plus about 200 bytes of multipart
framing), the time in the page from picking the photo to the request's start (decoding, scaling and encoding; for
the original only the page's own few dozen ms), the time from the request's start to the server's 202 (the upload,
throttled, plus the server's own decode of the photo), and their sum (from picking the photo to the answer). The
times are medians.

    .venv/bin/python -m simpsonize.bench.browser_upload [--repeat 3] [--upload-mbit 10] [--megapixels 12]

The byte counts are exact and do not depend on the machine. The times are dominated by the emulated network, but
the in-page step (a 12 MP decode) and the server's decode of an original take CPU: on a loaded machine both come out
longer than on an idle one or a phone of today, and the original's server-side decode is in its upload time.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from simpsonize.bench.common import REPO_ROOT, serving


def photo_like(width: int = 4000, height: int = 3000, grain: float = 9.0, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: the astronaut (a real photo, scikit-image) enlarged to width x height, plus sensor-like
    grain, so that it compresses like a phone photo (12 MP: about 5 MB of JPEG at quality 92)."""
    from skimage import data

    base = Image.fromarray(data.astronaut()).crop((0, 0, 512, 384)).resize((width, height), Image.BICUBIC)
    rng = np.random.default_rng(seed)
    pixels = np.asarray(base, np.float32) + rng.standard_normal((height, width, 1), dtype=np.float32) * grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def photo_jpeg(megapixels: float) -> bytes:
    height = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    buffer = io.BytesIO()
    photo_like(int(height * 4 / 3), height).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def upload_once(page, base: str, path: Path, shrink: bool) -> dict:
    """Open the page, pick ``path``, wait for the server's answer; returns the figures of that upload."""
    import httpx

    page.goto(base + "/")
    if not shrink:
        page.evaluate("delete document.getElementById('upload-form').dataset.maxSide")
        if path.stat().st_size > int(page.get_attribute("#upload-form", "data-max-bytes")):
            return {"refused": True}  # the page says it is too large, and sends nothing
    with page.expect_response(
        lambda r: r.url.endswith("/api/v1/jobs") and r.request.method == "POST", timeout=300_000
    ) as answer:
        picked = time.time() * 1000
        page.set_input_files("#file-input", str(path))
    response = answer.value
    if response.status != 202:
        raise RuntimeError(f"upload answered {response.status}: {response.text()}")
    request = response.request
    timing = request.timing  # startTime: epoch ms; the rest: ms after it
    length = request.all_headers().get("content-length")  # as sent (Playwright's body size misses a file's bytes)
    job = response.json()
    httpx.delete(base + job["status_url"], timeout=30)  # nothing will run it: tidy up now
    return {
        "body": int(length) if length else float("nan"),
        "prepare": max(0.0, timing["startTime"] - picked),
        "upload": timing["responseStart"],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=3, help="Uploads of each kind (default 3); medians reported.")
    parser.add_argument("--upload-mbit", type=float, default=10.0, help="Emulated upload, Mbit/s (default 10).")
    parser.add_argument("--download-mbit", type=float, default=40.0, help="Emulated download, Mbit/s (default 40).")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="Emulated round trip, ms (default 40).")
    parser.add_argument("--megapixels", type=float, default=12.0, help="The photo's size, 4:3 (default 12 MP).")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="Checkout to serve from (default: this one).")


def run(args: argparse.Namespace) -> int:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="szbench-"))
    photo = work / "IMG_4000x3000.jpg"
    photo.write_bytes(photo_jpeg(args.megapixels))
    with Image.open(photo) as image:
        photo_size = image.size
    photo_bytes = photo.stat().st_size
    rows: dict[str, list[dict]] = {"original": [], "shrunk": []}
    options = ("--workers", "0", "--data-dir", str(work / "data"), "--log-level", "warning")
    settings = {"SIMPSONIZE_RATE_LIMIT": "off", "SIMPSONIZE_MAX_QUEUE": "1000"}
    try:
        with serving(*options, repo=args.repo, settings=settings) as server, sync_playwright() as p:
            base = server.base
            browser = p.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            )
            context = browser.new_context()
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.send(
                "Network.emulateNetworkConditions",
                {
                    "offline": False,
                    "latency": args.latency_ms,
                    "uploadThroughput": args.upload_mbit * 1e6 / 8,
                    "downloadThroughput": args.download_mbit * 1e6 / 8,
                },
            )
            upload_once(page, base, photo, shrink=True)  # warm-up: the page, codecs, the server's first decode
            for _ in range(args.repeat):
                for kind in rows:
                    rows[kind].append(upload_once(page, base, photo, shrink=kind == "shrunk"))
            browser.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"photo: {photo_size[0]}x{photo_size[1]} JPEG, {photo_bytes:,} bytes; "
        f"network: {args.upload_mbit:g} Mbit/s up, {args.download_mbit:g} down, {args.latency_ms:g} ms latency "
        f"(Chromium emulation); {args.repeat} uploads each, medians; CPUs: {os.cpu_count()}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'upload':<10} {'request body, bytes':>20} {'in page, ms':>12} {'request -> 202, ms':>19} "
        f"{'pick -> 202, ms':>16}"
    )
    for kind, samples in rows.items():
        if any(s.get("refused") for s in samples):
            print(f"{kind:<10} refused: over the upload limit, so not sent at all")
            continue
        body = statistics.median(s["body"] for s in samples)
        prepare = statistics.median(s["prepare"] for s in samples)
        upload = statistics.median(s["upload"] for s in samples)
        total = statistics.median(s["prepare"] + s["upload"] for s in samples)
        print(f"{kind:<10} {body:>20,.0f} {prepare:>12,.0f} {upload:>19,.0f} {total:>16,.0f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
