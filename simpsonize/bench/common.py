"""Helpers every benchmark shares: one percentile, one free port (the CPU a figure came from: simpsonize.cpu)."""

from __future__ import annotations

import socket
import statistics
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
