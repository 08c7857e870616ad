"""`simpsonize serve`: embedded Redis + N workers + uvicorn; clean stop on Ctrl-C/SIGTERM, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service_support import REPO_ROOT, child_env, free_port


def descendants(pid: int) -> set[int]:
    """All processes below ``pid`` (children started in their own sessions included)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli.main", "serve", *args], cwd=REPO_ROOT,
                            env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(process: subprocess.Popen, port: int, workers: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    wanted = f"{workers} worker{'s' if workers != 1 else ''} alive"
    while True:
        assert process.poll() is None, process.communicate()
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if response.status_code == 200 and wanted in response.json()["detail"]:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"serve was not ready with {wanted} in {timeout:.0f} s"
        time.sleep(0.3)


def test_serve_refuses_to_start_workers_without_weights(tmp_path):
    process = serve("--port", str(free_port()), "--weights", str(tmp_path / "missing.safetensors"),
                    "--data-dir", str(tmp_path / "data"))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert "missing.safetensors does not exist" in lines[0]
    assert not (tmp_path / "data" / "redis.sock").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("stop_signal", "workers"), [(signal.SIGINT, 2), (signal.SIGTERM, 1)],
                         ids=["ctrl-c-2-workers", "sigterm-1-worker"])
def test_serve_runs_everything_and_stops_cleanly(tmp_path, tiny_weights, stop_signal, workers, astronaut_jpeg):
    port = free_port()
    data_dir = tmp_path / "data"
    process = serve("--port", str(port), "--workers", str(workers), "--weights", str(tiny_weights),
                    "--data-dir", str(data_dir))
    try:
        wait_ready(process, port, workers)
        children = descendants(process.pid)
        assert len(children) >= workers + 1  # redis-server + the workers
        assert (data_dir / "redis.sock").exists()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            job = client.post("/api/v1/jobs", files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")}).json()
            deadline = time.monotonic() + 240
            while (state := client.get(job["status_url"]).json())["status"] not in ("finished", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert state["status"] == "finished"
            assert client.get(job["result_url"]).headers["content-type"] == "image/png"

        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if alive(pid)], "orphaned processes left behind"
    assert not (data_dir / "redis.sock").exists()


@pytest.mark.slow
def test_children_die_with_a_killed_launcher(tmp_path, tiny_weights):
    port = free_port()
    process = serve("--port", str(port), "--workers", "1", "--weights", str(tiny_weights),
                    "--data-dir", str(tmp_path / "data"))
    try:
        wait_ready(process, port, 1)
        children = descendants(process.pid)
        process.kill()  # no chance to clean up: the kernel's parent-death signal must do it
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if alive(pid)]


def test_serve_with_redis_url_starts_only_the_web_process(redis_url):
    port = free_port()
    process = serve("--port", str(port), "--workers", "3", env=child_env(REDIS_URL=redis_url))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert descendants(process.pid) == set()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "only the web process" in err


def test_a_worker_that_cannot_load_the_weights_stops_serve(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    process = serve("--port", str(free_port()), "--weights", str(bad), "--data-dir", str(tmp_path / "data"))
    try:
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 2, err
    assert "bad.safetensors" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "data" / "redis.sock")


SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]  # ignores the --name the pool appends


def wait_for_check(pool, until, timeout: float = 30.0):
    """Call pool.check() (as the launcher's watch thread does) until ``until(code)`` holds; returns the code."""
    deadline = time.monotonic() + timeout
    while True:
        code = pool.check()
        if until(code):
            return code
        assert time.monotonic() < deadline, "the pool did not get there in time"
        time.sleep(0.05)


def test_worker_pool_replaces_a_killed_worker_under_a_new_name(monkeypatch):
    from app.embedded import die_with_parent
    from app.launcher import WorkerPool

    exited = []
    pool = WorkerPool([SLEEPER, SLEEPER], child_env(), die_with_parent, name_prefix="t", on_exit=exited.append)
    pool.start()
    try:
        assert pool.names == ["t-1.1", "t-2.1"]
        first = pool.processes[0]
        first.kill()  # as the OOM killer would, a second after the start: a crash, not a start-up failure
        first.wait()
        wait_for_check(pool, lambda code: pool.processes[0] is not None and pool.processes[0] is not first)
        assert pool.processes[0].poll() is None and pool.names[0] == "t-1.2"  # a new, unique RQ name
        assert exited == ["t-1.1"]  # the launcher is told, to end the job the dead worker held
        assert pool.processes[1].poll() is None and pool.names[1] == "t-2.1"  # the other one is untouched
    finally:
        pool.stop(5)
    assert all(process.poll() is not None for process in pool.processes)


@pytest.mark.parametrize("code", [2, 3])
def test_worker_pool_stops_on_start_up_failures(code):
    """2: bad weights or settings; 3: Redis unreachable when the first workers start."""
    from app.embedded import die_with_parent
    from app.launcher import WorkerPool

    pool = WorkerPool([SLEEPER, [sys.executable, "-c", f"raise SystemExit({code})"]], child_env(), die_with_parent)
    pool.start()
    try:
        assert wait_for_check(pool, lambda c: c is not None) == code
        assert pool.processes[0].poll() is None  # nothing restarted it in a loop; the launcher stops everything
    finally:
        pool.stop(5)


def test_worker_pool_retries_quick_crashes_with_a_pause_then_gives_up(monkeypatch):
    from app.embedded import die_with_parent
    from app.launcher import WorkerPool

    monkeypatch.setattr(WorkerPool, "RESTART_DELAY", 0.05)
    monkeypatch.setattr(WorkerPool, "MAX_QUICK_CRASHES", 3)
    pool = WorkerPool([[sys.executable, "-c", "raise SystemExit(1)"]], child_env(), die_with_parent, name_prefix="q")
    pool.start()
    try:
        assert wait_for_check(pool, lambda c: c is not None) == 1
        assert pool.generation == [3]  # started, restarted twice after a pause, then the service stops
    finally:
        pool.stop(5)
