"""Static checks of Dockerfile and docker-compose.yml: valid compose file, and every command they run exists in the
CLI with the options they pass."""

from __future__ import annotations

import importlib
import json
import os
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
    """The image's CMD/ENTRYPOINT in exec (JSON) form."""
    found = []
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"^(CMD|ENTRYPOINT)\s+(\[.*\])\s*$", line)  # not HEALTHCHECK's indented CMD
        if match:
            found.append(json.loads(match.group(2)))
    return found


def assert_cli_accepts(argv: list[str]) -> None:
    from simpsonize.cli import COMMANDS, build_parser

    assert argv[0] == "simpsonize", argv
    command = argv[1]
    assert command in COMMANDS, f"`simpsonize {command}` is not a CLI command"
    module = importlib.import_module(COMMANDS[command][0])
    args = build_parser({command: module}).parse_args(argv[1:])  # SystemExit on an unknown option
    assert args.command == command


def test_compose_file_is_valid_for_docker_compose(tmp_path):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    empty = tmp_path / "empty.env"  # not the developer's own .env
    empty.write_text("")
    command = [binary, "-f", str(COMPOSE), "--env-file", str(empty), "config", "-q"]

    def config(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)

    result = config({**env, "REDIS_PASSWORD": "s3cret"})
    assert result.returncode == 0, result.stderr
    # Without a password, compose refuses to start anything (rather than run an open Redis).
    result = config(env)
    assert result.returncode != 0 and "REDIS_PASSWORD" in result.stderr


def test_commands_in_compose_and_dockerfile_exist_in_the_cli():
    services = compose()["services"].values()
    commands = [
        service["command"]
        for service in services
        if isinstance(service.get("command"), list) and service["command"][0] == "simpsonize"
    ]
    commands += [
        service["healthcheck"]["test"][1:]
        for service in services
        if service.get("healthcheck", {}).get("test", [None, None])[1] == "simpsonize"
    ]
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
        assert service["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        assert service["environment"]["REDIS_URL"].endswith("@redis:6379/0")
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["web"]["command"][1] == "serve" and "healthcheck" in services["web"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"] and gpu["device_ids"] == ["0"]
    cpu = services["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    for name in ("worker", "worker-cpu"):  # `--scale worker=N` needs no fixed names or host ports
        assert "container_name" not in services[name] and "ports" not in services[name]


def test_dockerfile_builds_cpu_by_default_and_cuda_on_request():
    text = DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert "torch==2.14.1" in text
    assert re.search(r"^USER (?!root)", text, re.M)
    assert re.search(r'chmod 700 "\$\{SIMPSONIZE_DATA_DIR\}"', text)  # the embedded Redis socket's directory
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*/healthz", text, re.M)
    build_args = {name: service.get("build", {}).get("args", {}) for name, service in compose()["services"].items()}
    assert build_args["worker"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"  # CUDA wheels
    assert "whl/cpu" in build_args["web"]["TORCH_INDEX_URL"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data", "test-artifacts", ".env"} <= set(ignored)


def test_compose_redis_requires_a_password_from_the_env_file():
    services = compose()["services"]
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")  # for the healthcheck's ping
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "ports" not in redis  # reachable on the compose network only
    for name, service in services.items():
        url = service.get("environment", {}).get("REDIS_URL")
        assert url is None or "${REDIS_PASSWORD:?" in url, name
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^#?\s*REDIS_PASSWORD=", example, re.M)


def test_compose_redis_has_a_memory_limit_from_the_env_file_and_never_evicts():
    """A full Redis refuses writes (the web process answers 503 before that) instead of dropping queued jobs."""
    command = compose()["services"]["redis"]["command"]
    assert command[command.index("--maxmemory") + 1] == "${REDIS_MAXMEMORY:-2gb}"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert re.search(r"^#?\s*REDIS_MAXMEMORY=2gb$", (ROOT / ".env.example").read_text(), re.M)


def test_one_compose_service_per_gpu():
    pinned = {}
    for name, service in compose()["services"].items():
        for device in service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", []):
            assert "count" not in device, f"{name}: `count` lets Docker pick the GPU; pin it with device_ids"
            assert len(device["device_ids"]) == 1, name
            pinned[name] = device["device_ids"][0]
    assert len(pinned) >= 2 and len(set(pinned.values())) == len(pinned), pinned  # never two on one GPU by default


def test_compose_workers_get_time_to_finish_a_photo_and_are_health_checked():
    from simpsonize.settings import Settings

    def seconds(value: str) -> int:
        match = re.fullmatch(r"(\d+)(s|m)", value)
        return int(match.group(1)) * (60 if match.group(2) == "m" else 1)

    services = compose()["services"]
    for name in ("worker", "worker-gpu1", "worker-cpu"):
        assert seconds(services[name]["stop_grace_period"]) > Settings().job_timeout, name
        assert services[name]["healthcheck"]["test"] == ["CMD", "simpsonize", "worker", "--check"], name
    assert "healthcheck" in services["web"] and "stop_grace_period" in services["web"]
    assert all(port.startswith("127.0.0.1:") for port in services["web"]["ports"])  # a proxy goes in front
    assert "cpus" in services["worker-cpu"]  # torch threads follow the CPU quota it sets
