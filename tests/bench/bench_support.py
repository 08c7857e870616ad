"""`simpsonize bench WHAT` run as a user runs it: a subprocess from the checkout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """`simpsonize bench ARGS...`, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "simpsonize.cli", "bench", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bench_report(out: Path, *args: str, timeout: float) -> tuple[dict, subprocess.CompletedProcess]:
    """`simpsonize bench ARGS... --json OUT`, which must succeed; the report it wrote, and the finished process."""
    done = run_bench(*args, "--json", str(out), timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done
