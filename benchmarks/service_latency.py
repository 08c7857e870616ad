"""End-to-end latency of the embedded default: submit -> result available, through HTTP, Redis and the workers.

For each worker count it starts `simpsonize serve --workers N` (embedded Redis, N worker processes, uvicorn) on a
free port, warms every worker up (the first photo of a process builds the face detector), then measures
  * one photo alone (repeated, median reported), and
  * a burst of photos sent at once (each photo's latency, and the wall time until the last result).
Latency = from just before the POST until the result PNG has been downloaded; status is polled every 20 ms for
single photos and every 200 ms in a burst (so a burst figure can be up to 0.2 s late).

    python benchmarks/service_latency.py --weights weights/simpsonize.safetensors --workers 1 2 --burst 10
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
SINGLE_POLL_S = 0.02  # status polling: fine for one photo...
BURST_POLL_S = 0.2  # ...coarser for a burst, so ten pollers do not steal the workers' CPU on a small machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_photo() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def one_photo(base: str, photo: bytes, timeout: float, poll_s: float = SINGLE_POLL_S) -> float:
    """Seconds from submit to result downloaded."""
    with httpx.Client(base_url=base, timeout=60) as client:
        started = time.perf_counter()
        response = client.post("/api/v1/jobs", files={"file": ("photo.jpg", photo, "image/jpeg")})
        response.raise_for_status()
        job = response.json()
        deadline = started + timeout
        while True:
            state = client.get(job["status_url"]).json()
            if state["status"] == "finished":
                break
            if state["status"] == "failed":
                raise RuntimeError(f"job failed: {state.get('error')}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no result within {timeout:.0f} s")
            time.sleep(poll_s)
        result = client.get(job["result_url"])
        result.raise_for_status()
        return time.perf_counter() - started


def burst(base: str, photo: bytes, count: int, timeout: float) -> tuple[list[float], float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=count) as pool:
        latencies = list(pool.map(lambda _: one_photo(base, photo, timeout, BURST_POLL_S), range(count)))
    return latencies, time.perf_counter() - started


def wait_ready(base: str, process: subprocess.Popen, workers: int, timeout: float) -> None:
    wanted = f"{workers} worker{'s' if workers != 1 else ''} alive"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"simpsonize serve exited with code {process.returncode}")
        try:
            response = httpx.get(base + "/readyz", timeout=5)
            if response.status_code == 200 and wanted in response.json()["detail"]:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready with {wanted} after {timeout:.0f} s")
        time.sleep(0.2)


def measure(workers: int, weights: Path, photo: bytes, singles: int, burst_size: int, timeout: float,
            device: str | None, threads: int | None = None) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="szbench-") as data_dir:
        command = [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--workers", str(workers),
                   "--weights", str(weights), "--data-dir", data_dir, "--log-level", "warning"]
        if device:
            command += ["--device", device]
        if threads:
            command += ["--threads", str(threads)]
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            wait_ready(base, process, workers, timeout)
            startup = time.perf_counter() - started
            warmup, _ = burst(base, photo, 2 * workers, timeout)  # every worker builds its face detector
            single = [one_photo(base, photo, timeout) for _ in range(singles)]
            latencies, wall = burst(base, photo, burst_size, timeout)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    ordered = sorted(latencies)
    return {
        "workers": workers,
        "threads": threads,
        "startup_s": round(startup, 2),
        "warmup_max_s": round(max(warmup), 3),
        "single_s": [round(x, 3) for x in single],
        "single_median_s": round(statistics.median(single), 3),
        "burst": burst_size,
        "burst_wall_s": round(wall, 3),
        "burst_mean_s": round(statistics.mean(latencies), 3),
        "burst_median_s": round(statistics.median(latencies), 3),
        "burst_p90_s": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
        "burst_max_s": round(ordered[-1], 3),
        "burst_photos_per_s": round(burst_size / wall, 3),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "weights" / "simpsonize.safetensors")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--burst", type=int, default=10, help="photos sent at once (default 10)")
    parser.add_argument("--singles", type=int, default=3, help="one-photo repetitions (default 3)")
    parser.add_argument("--photo", type=Path, help="photo to send (default: scikit-image's astronaut)")
    parser.add_argument("--device", help="worker device (default: CUDA when present)")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: serve's cores / workers)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if not args.weights.is_file():
        print(f"service_latency: the weights file {args.weights} does not exist; pass --weights.", file=sys.stderr)
        return 2
    photo = args.photo.read_bytes() if args.photo else default_photo()

    print(f"weights {args.weights} | {len(os.sched_getaffinity(0))} CPU cores | load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rows = []
    for workers in args.workers:
        threads = args.threads or max(1, len(os.sched_getaffinity(0)) // workers)  # what serve would choose
        row = measure(workers, args.weights, photo, args.singles, args.burst, args.timeout, args.device, threads)
        rows.append(row)
        print(f"{workers} worker(s) x {threads} thread(s): ready in {row['startup_s']:.1f} s | "
              f"1 photo: median {row['single_median_s']:.3f} s "
              f"(runs {', '.join(f'{x:.3f}' for x in row['single_s'])}) | {row['burst']} at once: all done in "
              f"{row['burst_wall_s']:.2f} s, per photo mean {row['burst_mean_s']:.2f} / median "
              f"{row['burst_median_s']:.2f} / p90 {row['burst_p90_s']:.2f} / max {row['burst_max_s']:.2f} s, "
              f"{row['burst_photos_per_s']:.2f} photos/s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
