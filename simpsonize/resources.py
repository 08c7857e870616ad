"""Files shipped inside the package (package data), found the same way from a checkout and from an installed wheel.

Nothing here imports torch or the web stack, so the web process, the worker and the model can all use it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# A wheel installs the package as plain files (it is not zip-safe), so the resources are real paths on disk.
PACKAGE_DIR = Path(str(files("simpsonize")))

SHIPPED_WEIGHTS = PACKAGE_DIR / "weights" / "simpsonize.safetensors"  # the served generator; its card is beside it
MEDIAPIPE_DIR = PACKAGE_DIR / "weights" / "mediapipe"  # MediaPipe's networks (written by tools/convert_mediapipe.py)
TEMPLATES_DIR = PACKAGE_DIR / "web" / "templates"
STATIC_DIR = PACKAGE_DIR / "web" / "static"
EXAMPLES_INDEX = STATIC_DIR / "examples" / "examples.json"  # written by tools/make_examples.py
