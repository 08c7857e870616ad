"""`simpsonize serve`: embedded Redis + N workers + uvicorn; clean stop on Ctrl-C/SIGTERM, no orphans; children
started without ``preexec_fn`` (through ``simpsonize.serve.child_guard``) and supervised from the main thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from service_support import (
    REPO_ROOT,
    alive,
    child_env,
    descendants,
    free_port,
    serve,
    serving,
    wait_gone,
    wait_serving,
)


def test_serve_refuses_to_start_workers_without_weights(tmp_path):
    process = serve(
        "--port",
        str(free_port()),
        "--weights",
        str(tmp_path / "missing.safetensors"),
        "--data-dir",
        str(tmp_path / "data"),
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert "missing.safetensors does not exist" in lines[0]
    assert not (tmp_path / "data" / "redis.sock").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop_signal", "workers"), [(signal.SIGINT, 2), (signal.SIGTERM, 1)], ids=["ctrl-c-2-workers", "sigterm-1-worker"]
)
def test_serve_runs_everything_and_stops_cleanly(tmp_path, tiny_weights, stop_signal, workers, astronaut_jpeg):
    data_dir = tmp_path / "data"
    with serving(data_dir, tiny_weights, workers) as served:
        children = descendants(served.process.pid)
        assert len(children) >= workers + 1  # redis-server + the workers
        assert (data_dir / "redis.sock").exists()
        with httpx.Client(base_url=served.base_url, timeout=30) as client:
            job = client.post("/api/v1/jobs", files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")}).json()
            deadline = time.monotonic() + 240
            while (state := client.get(job["status_url"]).json())["status"] not in ("finished", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert state["status"] == "finished"
            assert client.get(job["result_url"]).headers["content-type"] == "image/png"
        err = served.stop(stop_signal)
    assert served.process.returncode == 0, err
    assert not wait_gone(children, 10), "orphaned processes left behind"
    assert not (data_dir / "redis.sock").exists()


@pytest.mark.slow
def test_children_die_with_a_killed_launcher(tmp_path, tiny_weights):
    with serving(tmp_path / "data", tiny_weights, 1) as served:
        children = descendants(served.process.pid)
        assert any("redis-server" in cmdline(pid) for pid in children)
        assert any("simpsonize.cli worker" in cmdline(pid) for pid in children)
        served.process.kill()  # no chance to clean up: the kernel's parent-death signal must do it
        served.process.wait()
    assert not wait_gone(children, 30)


def test_serve_with_redis_url_starts_only_the_web_process(redis_url):
    port = free_port()
    process = serve("--port", str(port), "--workers", "3", env=child_env(REDIS_URL=redis_url))
    try:
        wait_serving(process, f"http://127.0.0.1:{port}", 60)
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


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_for_check(pool, until, timeout: float = 30.0):
    """Call pool.check() (as the launcher's main loop does) until ``until(code)`` holds; returns the code."""
    deadline = time.monotonic() + timeout
    while True:
        code = pool.check()
        if until(code):
            return code
        assert time.monotonic() < deadline, "the pool did not get there in time"
        time.sleep(0.05)


def test_worker_pool_replaces_a_killed_worker_under_a_new_name(monkeypatch):
    from simpsonize.serve.supervision import WorkerPool

    exited = []
    pool = WorkerPool([SLEEPER, SLEEPER], child_env(), name_prefix="t", on_exit=exited.append)
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
    from simpsonize.serve.supervision import WorkerPool

    pool = WorkerPool([SLEEPER, [sys.executable, "-c", f"raise SystemExit({code})"]], child_env())
    pool.start()
    try:
        assert wait_for_check(pool, lambda c: c is not None) == code
        assert pool.processes[0].poll() is None  # nothing restarted it in a loop; the launcher stops everything
    finally:
        pool.stop(5)


def test_worker_pool_retries_quick_crashes_with_a_pause_then_gives_up(monkeypatch):
    from simpsonize.serve.supervision import WorkerPool

    monkeypatch.setattr(WorkerPool, "RESTART_DELAY", 0.05)
    monkeypatch.setattr(WorkerPool, "MAX_QUICK_CRASHES", 3)
    pool = WorkerPool([[sys.executable, "-c", "raise SystemExit(1)"]], child_env(), name_prefix="q")
    pool.start()
    try:
        assert wait_for_check(pool, lambda c: c is not None) == 1
        assert pool.generation == [3]  # started, restarted twice after a pause, then the service stops
    finally:
        pool.stop(5)


# -- children started without preexec_fn, supervised from the main thread --------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


@pytest.fixture()
def popen_calls(monkeypatch):
    """Every subprocess.Popen made from here on, each with the keyword arguments it got and the thread it ran in."""
    calls = []

    class Recording(subprocess.Popen):
        def __init__(self, args, *positional, **kwargs):
            self.positional, self.kwargs, self.thread = positional, kwargs, threading.current_thread()
            super().__init__(args, *positional, **kwargs)
            calls.append(self)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    return calls


def assert_guarded(process) -> None:
    """Started through simpsonize.serve.child_guard, without preexec_fn, in its own session."""
    assert not process.positional and process.kwargs.get("preexec_fn") is None
    assert process.kwargs.get("start_new_session") is True
    assert process.args[:5] == [sys.executable, "-m", "simpsonize.serve.child_guard", "--parent", str(os.getpid())]
    assert process.args[5] == "--"


def test_workers_and_redis_are_started_without_preexec_fn(tmp_path, popen_calls):
    from simpsonize.serve.embedded import EmbeddedRedis
    from simpsonize.serve.supervision import WorkerPool

    redis = EmbeddedRedis(tmp_path / "data")
    pool = WorkerPool([SLEEPER], child_env(), name_prefix="g")
    redis.start()
    try:
        pool.start()
        assert len(popen_calls) == 2
        for process in popen_calls:
            assert_guarded(process)
        assert popen_calls[0].args[6].endswith("redis-server")
        assert popen_calls[1].args[6:] == [*SLEEPER, "--name", "g-1.1"]
    finally:
        pool.stop(5)
        redis.stop()


PDEATHSIG_PROBE = (
    "import ctypes, os; value = ctypes.c_int(); "
    "ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0); "  # 2: PR_GET_PDEATHSIG
    "print(value.value, os.getpid(), os.getppid())"
)


@linux_only
def test_child_guard_sets_the_parent_death_signal_then_execs_the_command():
    from simpsonize.serve.child_guard import guarded

    process = subprocess.Popen(
        guarded([sys.executable, "-c", PDEATHSIG_PROBE]),
        cwd=REPO_ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    # SIGTERM on the parent's death, in the command itself: the same pid (exec, not a grandchild), our child
    assert out.split() == [str(int(signal.SIGTERM)), str(process.pid), str(os.getpid())]


def test_child_guard_runs_nothing_when_its_parent_is_already_gone(tmp_path):
    """The parent died before the child asked for the signal: the child is someone else's by then, and stops."""
    from simpsonize.serve.child_guard import EXIT_PARENT_GONE, guarded

    marker = tmp_path / "ran"
    command = guarded([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], parent=os.getpid() + 1)
    result = subprocess.run(command, cwd=REPO_ROOT, env=child_env(), timeout=60)
    assert result.returncode == EXIT_PARENT_GONE
    assert not marker.exists()


KILLED_LAUNCHER = """
import os, sys, time
from simpsonize.serve.embedded import EmbeddedRedis
from simpsonize.serve.supervision import WorkerPool
redis = EmbeddedRedis(sys.argv[1])
redis.start()
pool = WorkerPool([[sys.executable, "-c", "import time; time.sleep(120)"]], dict(os.environ), name_prefix="k")
pool.start()
print(redis.process.pid, pool.processes[0].pid, flush=True)
time.sleep(120)
"""


@linux_only
def test_a_worker_and_redis_die_with_a_killed_parent_through_the_guard(tmp_path):
    """The launcher's own classes in a process that is SIGKILLed: no cleanup, only the kernel's parent-death signal
    (requested by simpsonize.serve.child_guard, kept across its exec) ends the embedded Redis and the worker."""
    parent = subprocess.Popen(
        [sys.executable, "-c", KILLED_LAUNCHER, str(tmp_path / "data")],
        cwd=REPO_ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 2, parent.communicate(timeout=30)
        assert all(alive(pid) for pid in children)
        assert descendants(parent.pid) >= set(children)
        parent.kill()
        parent.wait()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert not wait_gone(children, 30), "children outlived their killed parent"


def test_redis_supervisor_restarts_redis_on_the_same_socket_without_waiting_for_it(tmp_path):
    from redis import Redis

    from simpsonize.serve.embedded import EmbeddedRedis
    from simpsonize.serve.supervision import RedisSupervisor

    redis = EmbeddedRedis(tmp_path / "data")
    redis.start()
    supervisor = RedisSupervisor(redis)
    try:
        old = redis.process
        assert supervisor.check() is None and redis.process is old  # alive: nothing to do
        old.kill()
        old.wait()
        assert supervisor.check() is None
        assert redis.process is not old and supervisor.starting_since is not None  # started, not waited for
        deadline = time.monotonic() + 30
        while supervisor.restarts == 0:
            assert supervisor.check() is None
            assert time.monotonic() < deadline, "the restarted Redis never answered"
            time.sleep(0.02)
        assert supervisor.starting_since is None and supervisor.failed == 0
        assert redis.socket == tmp_path / "data" / "redis.sock"
        client = Redis(unix_socket_path=str(redis.socket))
        assert client.ping()
        client.close()
    finally:
        redis.stop()


def test_redis_supervisor_stops_the_service_after_failed_restarts(tmp_path, monkeypatch):
    import shutil

    from simpsonize.serve import embedded
    from simpsonize.serve.supervision import RedisSupervisor

    redis = embedded.EmbeddedRedis(tmp_path / "data")
    redis.start()
    supervisor = RedisSupervisor(redis)
    try:
        monkeypatch.setattr(embedded, "redis_server_binary", lambda: shutil.which("false"))  # exits 1 at once
        redis.process.kill()
        redis.process.wait()
        deadline = time.monotonic() + 60
        while (code := supervisor.check()) is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert code == 1 and supervisor.failed == RedisSupervisor.MAX_FAILED_RESTARTS
    finally:
        redis.stop()


def test_supervised_server_stops_with_the_code_a_check_returns(capsys):
    import asyncio

    import uvicorn

    from simpsonize.serve.supervision import SupervisedServer

    config = uvicorn.Config(app=None)
    calls = []
    server = SupervisedServer(config, checks=[lambda: calls.append("redis"), lambda: 5, lambda: calls.append("no")])
    assert asyncio.run(server.on_tick(1)) is True  # uvicorn's main loop ends on this tick
    assert server.exit_code == 5 and calls == ["redis"]

    def broken():
        raise ValueError("oops")

    server = SupervisedServer(config, checks=[broken])
    assert asyncio.run(server.on_tick(1)) is True and server.exit_code == 1
    assert "supervision failed" in capsys.readouterr().err


def test_serve_starts_checks_and_restarts_children_only_from_the_main_thread(tmp_path, popen_calls, monkeypatch):
    """`serve` in this process, with a sleeper for a worker: its checks (recorded), the worker's replacement and
    Redis's restart (both caused here) all run in the main thread, and no child gets a preexec_fn."""
    import argparse

    from simpsonize.serve import launcher, supervision
    from simpsonize.settings import Settings

    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"never read: the worker is a sleeper")
    monkeypatch.setattr(launcher, "worker_command", lambda *args, **kwargs: list(SLEEPER))
    monkeypatch.setattr(
        launcher, "get_settings", lambda: Settings(redis_url=None, data_dir=tmp_path / "data", rate_limit="off")
    )
    monkeypatch.setattr(supervision.WorkerPool, "RESTART_DELAY", 0.05)
    checked_in: set[threading.Thread] = set()
    seen = {}
    started = time.monotonic()
    redis_check, pool_check = supervision.RedisSupervisor.check, supervision.WorkerPool.check

    def recording_redis_check(self):
        checked_in.add(threading.current_thread())
        seen["supervisor"] = self
        return redis_check(self)

    def driving_pool_check(self):
        """The real check, then the next fault: kill the worker, then (once replaced) Redis, then stop with 7."""
        checked_in.add(threading.current_thread())
        code = pool_check(self)
        if code is not None:
            return code
        first = seen.setdefault("worker", self.processes[0])
        if time.monotonic() - started > 120:
            return 9  # stuck: fails the test below
        if not seen.get("worker killed"):
            first.kill()
            seen["worker killed"] = True
        elif self.processes[0] is not None and self.processes[0] is not first and not seen.get("redis killed"):
            seen["supervisor"].redis.process.kill()
            seen["redis killed"] = True
        elif seen.get("redis killed") and seen["supervisor"].restarts == 1:
            return 7
        return None

    monkeypatch.setattr(supervision.RedisSupervisor, "check", recording_redis_check)
    monkeypatch.setattr(supervision.WorkerPool, "check", driving_pool_check)
    args = argparse.Namespace(
        host="127.0.0.1",
        port=free_port(),
        workers=1,
        weights=weights,
        device=None,
        threads=1,
        data_dir=tmp_path / "data",
        log_level="warning",
    )
    assert launcher.run(args) == 7
    assert checked_in == {threading.main_thread()}
    redis_starts = [p for p in popen_calls if p.args[6].endswith("redis-server")]
    worker_starts = [p for p in popen_calls if p.args[6:9] == SLEEPER]
    assert len(redis_starts) == 2 and len(worker_starts) == 2 and len(popen_calls) == 4
    assert worker_starts[0].args[-1] != worker_starts[1].args[-1]  # a new RQ name
    for process in popen_calls:
        assert_guarded(process)
        assert process.thread is threading.main_thread()
        assert process.poll() is not None  # all stopped on the way out
    assert not (tmp_path / "data" / "redis.sock").exists()
