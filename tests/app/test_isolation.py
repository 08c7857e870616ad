"""app/ must never import torch, model/ or training/, not even transitively."""

from __future__ import annotations

import subprocess
import sys

from service_support import REPO_ROOT, child_env

PROBE = """
import sys
import app.capacity, app.deps, app.embedded, app.jobstore, app.keys, app.launcher, app.main, app.schemas, app.settings
import app.uploads
from app.main import create_app
from app.settings import Settings
app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
from fastapi.testclient import TestClient
with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "model", "training",
                                                              "facenet_pytorch", "worker"))
print("HEAVY:", heavy)
"""


def test_app_imports_no_torch_model_or_training():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=child_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY: []" in result.stdout, result.stdout
