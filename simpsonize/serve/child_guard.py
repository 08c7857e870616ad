"""Start a child that dies with the process that started it, without ``preexec_fn``.

``python -m simpsonize.serve.child_guard --parent PID -- PROGRAM ARGS...`` asks the kernel for SIGTERM when its parent
dies
(Linux ``PR_SET_PDEATHSIG``; a no-op elsewhere), checks that its parent is still ``PID`` (had the parent died before
the request, no signal would ever come), then replaces itself with ``PROGRAM`` (``execvp``: same pid, same
environment; the request survives ``execve`` for programs that are not set-user-ID, such as ``redis-server`` and
Python).

Why not ``subprocess.Popen(preexec_fn=...)``: Python code between ``fork`` and ``exec`` can deadlock in a process
that has threads (CPython's documentation warns against it), and the web process has them (the thread pool that runs
the synchronous routes). ``guarded(argv)`` builds the command; ``Popen`` then forks and execs without running Python
in the child.

The kernel's "parent" is the *thread* that forked: a child started from a helper thread would be signalled when that
thread ends. The launcher therefore starts every child from its main thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
EXIT_PARENT_GONE = 1


def guarded(argv: list[str], parent: int | None = None) -> list[str]:
    """The command that runs ``argv`` as a child of ``parent`` (default: this process) that dies with it."""
    return [
        sys.executable,
        "-m",
        "simpsonize.serve.child_guard",
        "--parent",
        str(os.getpid() if parent is None else parent),
        "--",
        *argv,
    ]


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask for ``sig`` when the parent dies, even by SIGKILL. Returns False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or args[0] != "--parent" or args[2] != "--" or not args[1].isdigit():
        print("usage: python -m simpsonize.serve.child_guard --parent PID -- PROGRAM [ARGS...]", file=sys.stderr)
        raise SystemExit(2)
    parent, command = int(args[1]), args[3:]
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request above: no signal will come, so stop now
        raise SystemExit(EXIT_PARENT_GONE)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"cannot run {command[0]}: {exc}", file=sys.stderr)
        raise SystemExit(127) from None


if __name__ == "__main__":
    main()
