"""How many CPUs this process may really use: its affinity mask, lowered to the cgroup CPU quota when one is set.

``os.cpu_count()`` (and torch's default thread count) report the host's cores even in a container limited to two
(``docker run --cpus 2``, compose ``cpus:``); threads beyond the quota only queue for it. Read by the launcher
(threads per worker), the worker (torch threads) and the web process (decodes at once). Light: stdlib only.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), or None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: the affinity mask, capped by the cgroup quota (rounded up, at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def limited_cpus(root: Path = CGROUP_ROOT) -> int | None:
    """``available_cpus()`` when it is fewer than the machine's CPUs (a quota or an affinity mask), else None (then
    torch keeps its own default, one thread per physical core)."""
    cpus = available_cpus(root)
    return cpus if cpus < (os.cpu_count() or cpus) else None
