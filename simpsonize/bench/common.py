"""Helpers every benchmark shares: one percentile, one free port, the astronaut photo, a noise dataset, `simpsonize
serve` started and stopped (the CPU a figure came from: simpsonize.cpu). Only the standard library at import: numpy,
Pillow, scikit-image and httpx are imported by the functions that need them."""

from __future__ import annotations

import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

# The checkout (site-packages when installed): the working directory of the services a benchmark starts.
REPO_ROOT = Path(__file__).resolve().parents[2]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) of ``values``, interpolated between the two nearest ranks (the "inclusive" method of
    `statistics.quantiles`, numpy's default): the median of [1, 2, 3, 4] is 2.5. None for no values."""
    if not values:
        return None
    share = Fraction(q).limit_denominator(10_000)  # q = k / n: the k-th of the n - 1 cut points quantiles gives
    if len(values) == 1 or share <= 0:
        return min(values)
    if share >= 1:
        return max(values)
    return statistics.quantiles(values, n=share.denominator, method="inclusive")[share.numerator - 1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it), for a service a benchmark or a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def noise_dataset(root: Path, size: int, count: int) -> Path:
    """``count`` random ``size`` px PNGs in each of ``root``/trainA and trainB, for a training step to be timed on: its
    cost does not depend on what the pixels show."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("trainA", "trainB"):
        (root / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
    return root


def astronaut_jpeg() -> bytes:
    """The photo a service benchmark sends unless told otherwise: scikit-image's astronaut, 512x512, JPEG quality 90."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# -- `simpsonize serve` in a subprocess -------------------------------------------------------------------------------


class ServeExited(RuntimeError):
    """`simpsonize serve` ended before it answered; the message ends with what it wrote, where that was piped."""


def serve_env(repo: Path = REPO_ROOT, inherit: bool = False, **settings: str) -> dict[str, str]:
    """This process's environment for a `serve` child: without REDIS_URL (else it would use that Redis, not its
    embedded one) and, unless ``inherit``, without the SIMPSONIZE_* settings of this shell; checkout ``repo`` on the
    path; ``settings`` (``SIMPSONIZE_RATE_LIMIT="off"``, ...) on top."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and (inherit or not k.startswith("SIMPSONIZE_"))}
    return env | {"PYTHONPATH": str(repo)} | settings


def wait_serving(
    process: subprocess.Popen, base: str, timeout: float, path: str = "/healthz", workers: int | None = None
) -> None:
    """Poll ``base + path`` until it answers 200, and with ``workers`` until /readyz counts that many live workers.
    ServeExited if ``process`` ends first, TimeoutError after ``timeout`` s."""
    import httpx

    wanted = None if workers is None else f"{workers} worker{'s' if workers != 1 else ''} alive"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            output = "\n".join(part for part in process.communicate() if part)
            raise ServeExited(f"simpsonize serve exited with code {process.returncode} before it answered\n{output}")
        try:
            response = httpx.get(base + path, timeout=5)
            if response.status_code == 200 and (wanted is None or wanted in response.json()["detail"]):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"simpsonize serve did not answer {path}{f' with {wanted}' if wanted else ''} in {timeout:.0f} s"
            )
        time.sleep(0.2)


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Unless it has ended: send ``sig`` (SIGTERM; SIGINT as Ctrl-C) and wait up to ``timeout`` s, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Serving:
    process: subprocess.Popen
    base: str  # http://127.0.0.1:PORT


@contextmanager
def serving(
    *options: str,
    repo: Path = REPO_ROOT,
    settings: dict[str, str] | None = None,
    inherit: bool = False,
    stderr=subprocess.PIPE,
    timeout: float = 90.0,
    path: str = "/healthz",
    workers: int | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = 30.0,
) -> Iterator[Serving]:
    """`simpsonize serve --port PORT OPTIONS...` from checkout ``repo`` on a free port, in ``serve_env(repo, inherit,
    **settings)``, its stdout discarded and its stderr to ``stderr``; yielded once it answers (``wait_serving``),
    stopped on the way out (``stop_process``)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "simpsonize.cli", "serve", "--port", str(port), *options],
        cwd=repo,
        env=serve_env(repo, inherit, **(settings or {})),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_serving(process, base, timeout, path, workers)
        yield Serving(process, base)
    finally:
        stop_process(process, stop_signal, stop_timeout)
