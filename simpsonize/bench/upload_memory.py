"""Peak memory of the web process under a burst of decode-heavy uploads, and /healthz meanwhile.

Starts `simpsonize serve --workers 0` (embedded Redis, the web process, no workers: jobs just queue) from a checkout
(this one, or ``--repo`` for another, e.g. an older commit), warms it up with one small upload, resets the kernel's
peak-RSS mark of the web process (``/proc/PID/clear_refs``), sends ``--uploads`` transparent PNGs of
``--megapixels`` at once (each a few dozen KB: they pass every size check) and reports the growth of its peak RSS
(``VmHWM``), the answers it gave, and the slowest /healthz seen while the burst was in flight.

    simpsonize bench uploads [--uploads 8] [--megapixels 20] [--repo PATH]

Target (issue 9): 8 concurrent 20 MP uploads grow the peak by at most 600 MB.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from simpsonize.bench.common import REPO_ROOT, ServeExited, serving


def transparent_png(megapixels: float) -> bytes:
    """A 4:3 RGBA PNG: a yellow disc on transparency. Compresses to a few dozen KB whatever its pixel count."""
    from PIL import Image, ImageDraw

    height = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    width = int(height * 4 / 3)
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((width // 5, height // 8, width * 4 // 5, height * 7 // 8), fill=(250, 210, 40, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    """Set VmHWM back to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uploads", type=int, default=8, help="Uploads sent at once (default 8).")
    parser.add_argument("--megapixels", type=float, default=20.0, help="Pixels of each PNG (default 20 MP).")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="Checkout to serve from (default: this one).")
    parser.add_argument(
        "--decoders",
        type=int,
        help="SIMPSONIZE_DECODE_CONCURRENCY for the server (default: its own, one per CPU up to 4).",
    )


def run(args: argparse.Namespace) -> int:
    photo = transparent_png(args.megapixels)
    data_dir = tempfile.mkdtemp(prefix="szbench-")
    settings = {"SIMPSONIZE_RATE_LIMIT": "off", "SIMPSONIZE_MAX_QUEUE": "1000"}
    if args.decoders:
        settings["SIMPSONIZE_DECODE_CONCURRENCY"] = str(args.decoders)
    options = ("--workers", "0", "--data-dir", data_dir, "--log-level", "warning")
    try:
        with serving(*options, repo=args.repo, settings=settings, timeout=60) as server:
            process, base = server.process, server.base
            with httpx.Client(base_url=base, timeout=120) as client:  # warm-up: imports, codecs, Redis scripts
                client.post("/api/v1/jobs", files={"file": ("w.png", transparent_png(0.1), "image/png")})
            before_rss = status_kb(process.pid, "VmRSS")
            exact = reset_peak(process.pid)
            before_peak = status_kb(process.pid, "VmHWM")

            health: list[float] = []
            done = threading.Event()

            def probe() -> None:
                with httpx.Client(base_url=base, timeout=30) as client:
                    while not done.is_set():
                        started = time.perf_counter()
                        client.get("/healthz")
                        health.append(time.perf_counter() - started)
                        time.sleep(0.05)

            prober = threading.Thread(target=probe, daemon=True)
            prober.start()

            def send(_):
                with httpx.Client(base_url=base, timeout=300) as client:
                    return client.post("/api/v1/jobs", files={"file": ("big.png", photo, "image/png")}).status_code

            started = time.perf_counter()
            with ThreadPoolExecutor(args.uploads) as pool:
                codes = Counter(pool.map(send, range(args.uploads)))
            elapsed = time.perf_counter() - started
            done.set()
            prober.join(30)
            peak = status_kb(process.pid, "VmHWM")
    except ServeExited as exc:
        print(exc, file=sys.stderr)
        return 1

    growth_mb = (peak - (before_peak if exact else before_rss)) / 1024
    print(f"checkout:            {args.repo}")
    print(
        f"uploads at once:     {args.uploads} transparent PNGs, {args.megapixels:g} MP, {len(photo) / 1024:.0f} KB each"
    )
    print(f"decoders:            {args.decoders or 'default'}")
    print(f"answers:             {dict(sorted(codes.items()))}")
    print(f"web RSS before:      {before_rss / 1024:.0f} MB")
    print(f"peak RSS growth:     {growth_mb:.0f} MB  (target <= 600 MB){'' if exact else ' (peak mark not reset)'}")
    print(f"burst wall time:     {elapsed:.1f} s")
    if health:
        print(f"/healthz meanwhile:  {len(health)} probes, slowest {max(health) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
