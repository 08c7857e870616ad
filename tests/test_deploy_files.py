"""Static checks of Dockerfile and docker-compose.yml: valid compose file, and every command they run exists in the
CLI with the options they pass."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile_commands() -> list[list[str]]:
    """CMD/ENTRYPOINT in exec (JSON) form."""
    found = []
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"^\s*(CMD|ENTRYPOINT)\s+(\[.*\])\s*$", line)
        if match:
            found.append(json.loads(match.group(2)))
    return found


def assert_cli_accepts(argv: list[str]) -> None:
    from cli.main import COMMANDS, build_parser

    assert argv[0] == "simpsonize", argv
    command = argv[1]
    assert command in COMMANDS, f"`simpsonize {command}` is not a CLI command"
    module = importlib.import_module(COMMANDS[command][0])
    args = build_parser({command: module}).parse_args(argv[1:])  # SystemExit on an unknown option
    assert args.command == command


def test_compose_file_is_valid_for_docker_compose():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    result = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_commands_in_compose_and_dockerfile_exist_in_the_cli():
    commands = [service["command"] for service in compose()["services"].values()
                if isinstance(service.get("command"), list) and service["command"][0] == "simpsonize"]
    commands += dockerfile_commands()
    assert len(commands) >= 4  # web, worker, worker-cpu, the image's default
    for argv in commands:
        assert_cli_accepts(argv)


def test_compose_services():
    services = compose()["services"]
    assert {"redis", "web", "worker", "worker-cpu"} <= set(services)
    assert "healthcheck" in services["redis"]
    for name in ("web", "worker", "worker-cpu"):
        service = services[name]
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["web"]["command"][1] == "serve" and "healthcheck" in services["web"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    cpu = services["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    for name in ("worker", "worker-cpu"):  # `--scale worker=N` needs no fixed names or host ports
        assert "container_name" not in services[name] and "ports" not in services[name]


def test_dockerfile_builds_cpu_by_default_and_cuda_on_request():
    text = DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert "torch==2.14.1" in text
    assert re.search(r"^USER (?!root)", text, re.M)
    build_args = {name: service.get("build", {}).get("args", {}) for name, service in compose()["services"].items()}
    assert build_args["worker"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"  # CUDA wheels
    assert "whl/cpu" in build_args["web"]["TORCH_INDEX_URL"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data", "test-artifacts"} <= set(ignored)
