"""Child processes that cannot outlive the test session.

Every server the testbed starts (etcd, the control plane, kwok, the S3 server, Prometheus, the
process node's pods) goes through :func:`spawn`. Three layers make sure none is left behind:

1. each child leads its own process group (``start_new_session``), so stopping it also stops
   whatever it forked (torchrun workers, seaweedfs' sub-servers);
2. a registry stops every live group at interpreter exit (``atexit``), which covers a test run
   that fails or is interrupted with Ctrl-C;
3. the kernel sends SIGKILL to a child whose parent dies (``PR_SET_PDEATHSIG``), which covers
   the cases where Python never gets to run ``atexit`` (SIGKILL, ``os._exit`` from a timeout).

PDEATHSIG fires when the *thread* that forked the child exits, so long-lived threads (the main
thread, the process node's worker) must be the ones that spawn.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Proc:
    """A started child: its Popen, its name, and the file its output goes to."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path | None) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        """Signal the whole process group (the child and anything it forked)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL it. Returns the exit code."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        # Kill stragglers in the group even when the leader already exited.
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):  # a process stuck in the kernel
            self.popen.wait(timeout=10)
        _registry.discard(self)
        return self.popen.returncode

    def tail(self, lines: int = 40) -> str:
        """The last lines of the child's log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()[-16384:].decode(errors="replace")
        return "\n".join(data.splitlines()[-lines:])


class _Registry:
    def __init__(self) -> None:
        self._procs: set[Proc] = set()
        self._lock = threading.Lock()

    def add(self, proc: Proc) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: Proc) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            proc.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 3
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            proc.signal_group(signal.SIGKILL)


_registry = _Registry()
atexit.register(_registry.stop_all)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> Proc:
    """Start ``argv`` in a new process group, output to ``log_path``, registered for clean-up."""
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - the child owns the descriptor after fork
    else:
        out = open(os.devnull, "wb")  # noqa: SIM115
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        out.close()
    proc = Proc(name, popen, log_path)
    _registry.add(proc)
    return proc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class StartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: Proc | None = None,
    interval: float = 0.05,
) -> None:
    """Poll ``check`` until it is true; fail early if ``proc`` dies, and late after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if proc is not None and not proc.alive():
            raise StartError(
                f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}; "
                f"log {proc.log_path}:\n{proc.tail()}"
            )
        if time.monotonic() > deadline:
            tail = f"; log {proc.log_path}:\n{proc.tail()}" if proc is not None else ""
            raise StartError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)
