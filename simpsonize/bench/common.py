"""Helpers every benchmark shares: one percentile, one free port, one name for the CPU a figure came from."""

from __future__ import annotations

import platform
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_name() -> str:
    """The CPU model, family/model numbers and the vector extensions that decide kernel speed (the CPU model
    changes between machines of the same name, so every figure carries it)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    extensions = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if name in flags]
    return (f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')}; {', '.join(extensions) or 'no AVX2'})")
