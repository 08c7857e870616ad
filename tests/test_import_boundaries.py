"""The package's nevers, checked in fresh interpreters (what a module imports at import time, transitively):

- ``web`` (and the ``serve`` launcher, which runs the web process) never imports torch, ``model``, ``worker`` or
  ``training``: the web process stays small and starts fast;
- ``model`` imports neither ``web``, ``queue``, ``worker`` nor ``training``: library callers get the model alone;
- ``worker`` never imports ``training``.
And the package's own import graph has no cycles.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import simpsonize

PACKAGE_DIR = Path(simpsonize.__file__).parent

PROBE = """
import importlib, json, pkgutil, sys
import simpsonize
for part in {parts!r}:
    package = importlib.import_module("simpsonize." + part)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""

NEVERS = {
    ("web", "serve"): (
        "torch",
        "torchvision",
        "facenet_pytorch",
        "simpsonize.model",
        "simpsonize.worker",
        "simpsonize.training",
    ),
    ("model",): ("simpsonize.web", "simpsonize.queue", "simpsonize.worker", "simpsonize.training", "fastapi"),
    ("worker",): ("simpsonize.training",),
}


@pytest.mark.parametrize("parts", list(NEVERS), ids=["+".join(p) for p in NEVERS])
def test_package_part_never_imports_the_forbidden(parts):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(parts=parts)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(name.startswith(f"simpsonize.{parts[0]}.") for name in loaded)  # the probe did import the part
    forbidden = NEVERS[parts]
    leaked = sorted(name for name in loaded if any(name == f or name.startswith(f + ".") for f in forbidden))
    assert leaked == [], f"simpsonize.{'/'.join(parts)} imports {leaked}"


def test_web_app_serves_without_torch():
    """The web process itself, built and answering, not only its modules imported."""
    probe = """
import sys
from fastapi.testclient import TestClient
from simpsonize.web.main import create_app
from simpsonize.settings import Settings
with TestClient(create_app(Settings(redis_url="redis://127.0.0.1:1/0"))) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "facenet_pytorch")))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def module_imports() -> dict[str, set[str]]:
    """Module -> the simpsonize modules it imports anywhere in its source (top level or inside functions)."""
    modules = {info.name for info in pkgutil.walk_packages([str(PACKAGE_DIR)], "simpsonize.")}
    graph = {}
    for name in modules:
        relative = name.split(".")[1:]
        path = PACKAGE_DIR.joinpath(*relative)
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_import_graph_has_no_cycles():
    graph = module_imports()
    assert len(graph) > 40 and graph["simpsonize.web.main"]  # the walk found the package and its imports
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(child) :] + [child]))
            if child not in state:
                visit(child, path + [child])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
