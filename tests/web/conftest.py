"""Service fixtures (real Redis, a real worker subprocess): see service_support.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_support import *  # noqa: E402,F401,F403
