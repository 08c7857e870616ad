"""Service fixtures (real Redis, a real worker subprocess): see service_support.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "web"))

import signal  # noqa: E402

import pytest  # noqa: E402
from service_support import *  # noqa: E402,F401,F403


@pytest.fixture()
def restore_signals():
    """Workers run in the test process install their own SIGINT/SIGTERM/SIGALRM handlers (RQ's); put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
