"""The CPU: how many of them this process may really use, and what it is (``/proc/cpuinfo``, read here only).

How many: the affinity mask, lowered to the cgroup CPU quota when one is set.

``os.cpu_count()`` (and torch's default thread count) report the host's cores even in a container limited to two
(``docker run --cpus 2``, compose ``cpus:``); threads beyond the quota only queue for it. Read by the launcher
(threads per worker), the worker (torch threads) and the web process (decodes at once). Light: stdlib only.

What: the model name, family/model numbers and vector extensions, which decide kernel speed (the CPU model changes
between machines of the same name, so every benchmark figure carries it; training picks bf16 by the flags).
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPUINFO = Path("/proc/cpuinfo")
VECTOR_EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the ones named in benchmark figures


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


def cpu_info(path: Path = CPUINFO) -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` ("model name", "flags", ...); empty where there is none."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: they are alike
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(path: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags (avx2, amx_bf16, ...); empty where unknown."""
    return set(cpu_info(path).get("flags", "").split())


def cpu_model_name(path: Path = CPUINFO) -> str:
    """The CPU's model name, e.g. "AMD EPYC 9R14 96-Core Processor"."""
    return cpu_info(path).get("model name") or platform.processor() or "unknown CPU"


def cpu_name(path: Path = CPUINFO) -> str:
    """The model name, family/model numbers and the vector extensions that decide kernel speed, for benchmark
    figures: "AMD EPYC 9R14 96-Core Processor (family 25 model 17; avx2, avx512f, avx512_bf16)"."""
    fields = cpu_info(path)
    if not fields:
        return platform.processor() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    extensions = [name for name in VECTOR_EXTENSIONS if name in flags]
    return (
        f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')} model "
        f"{fields.get('model', '?')}; {', '.join(extensions) or 'no AVX2'})"
    )
