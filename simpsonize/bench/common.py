"""Helpers every benchmark shares: one percentile, one free port (the CPU a figure came from: simpsonize.cpu)."""

from __future__ import annotations

import socket
import statistics
from pathlib import Path

# The checkout (site-packages when installed): the working directory of the services a benchmark starts.
REPO_ROOT = Path(__file__).resolve().parents[2]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) of ``values``, interpolated between the two nearest ranks (the "inclusive" method of
    `statistics.quantiles`, numpy's default): the median of [1, 2, 3, 4] is 2.5. None for no values."""
    if not values:
        return None
    if len(values) == 1 or q <= 0:
        return min(values)
    if q >= 1:
        return max(values)
    cuts = statistics.quantiles(values, n=1000, method="inclusive")  # 999 cut points, 0.1 % apart
    return cuts[round(q * 1000) - 1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it), for a service a benchmark or a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
