"""What `simpsonize serve` supervises, and how: uvicorn's server running checks on the ticks of its main loop
(``SupervisedServer``), the embedded default's worker processes (``WorkerPool``), the embedded Redis's restarts
(``RedisSupervisor``) and whether Redis is full or unreachable (``RedisWatch``). Every check runs in the launcher's
main thread (why: ``SupervisedServer``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

import uvicorn

from simpsonize.serve.child_guard import guarded


def say(message: str) -> None:
    """A line of the launcher's own on stderr."""
    print(f"simpsonize serve: {message}", file=sys.stderr, flush=True)


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
                    say("supervision failed; stopping.\n" + traceback.format_exc().rstrip())
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
                    say(f"worker pid {process.pid} {how} while starting; stopping.")
                    return code
                self.processes[i] = None
                trouble = self.redis_trouble() if self.redis_trouble is not None else None
                if trouble:
                    self.redis_exits[i] += 1
                    delay = min(30.0, self.RESTART_DELAY * 2 ** (self.redis_exits[i] - 1))
                    say(
                        f"worker pid {process.pid} {how} while Redis is {trouble}; not a crash of the worker, so "
                        f"serve stays up (uploads get 503 meanwhile); starting a new one in {delay:.0f} s."
                    )
                    self.restart_at[i] = now + delay
                    continue
                self.redis_exits[i] = 0
                quick = now - self.started[i] < self.MIN_UPTIME
                self.quick_crashes[i] = self.quick_crashes[i] + 1 if quick else 0
                if self.quick_crashes[i] >= self.MAX_QUICK_CRASHES:
                    say(
                        f"worker pid {process.pid} {how}, the {self.quick_crashes[i]}th time in a row within "
                        f"{self.MIN_UPTIME:.0f} s of starting; stopping."
                    )
                    return code if code > 0 else 1
                if self.quick_crashes[i]:
                    delay = min(30.0, self.RESTART_DELAY * 2 ** (self.quick_crashes[i] - 1))
                    say(f"worker pid {process.pid} {how}; starting a new one in {delay:.0f} s.")
                    self.restart_at[i] = now + delay
                else:
                    say(f"worker pid {process.pid} {how}; starting a new one.")
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
        say(f"could not restart Redis: {reason}")
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
                say("embedded Redis is back (empty: jobs that were queued are lost and must be uploaded again).")
            elif time.monotonic() - self.starting_since > self.START_TIMEOUT:
                process.kill()
                process.wait()
                return self._failure(
                    f"redis-server did not answer on {self.redis.socket} within {self.START_TIMEOUT:.0f} s."
                )
            return None
        if process.poll() is None:
            return None
        say(
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
            say(f"Redis is {trouble}: uploads get 503 until it has room again.")
        elif not trouble and self.trouble and self.trouble_at is not None:
            say("Redis has room again.")
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
