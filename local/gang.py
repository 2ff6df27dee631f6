"""One attempt of one stage on this machine: a gang of torchrun agents, one per simulated node.

The agents get the same PET_* contract the operator puts on pods (PET_NNODES, PET_NODE_RANK,
PET_MASTER_ADDR/PORT, PET_RDZV_ID), so a stage cannot tell a laptop from a cluster. Each agent
runs in its own session (process group), so Ctrl-C or a failed peer takes down every process of
the gang, children included, and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from forgeline.api import torchrun
from forgeline.jobs.errors import PERMANENT_EXIT_CODES

TERM_GRACE_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GangResult:
    exit_code: int
    events: list[dict[str, Any]] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)  # last lines of output, for the failure reason

    def last(self, event: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == event), None)


class Gang:
    """torchrun agents for `nodes` simulated nodes of `procs` processes each."""

    def __init__(
        self,
        *,
        stage: str,
        config_path: Path,
        nodes: int,
        procs: int,
        rdzv_id: str,
        workdir: Path,
        log_prefix: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.stage, self.config_path, self.nodes, self.procs = stage, config_path, nodes, procs
        self.rdzv_id, self.workdir, self.log_prefix = rdzv_id, workdir, log_prefix
        self.extra_env = env or {}
        self.processes: list[subprocess.Popen[str]] = []

    def command(self) -> list[str]:
        return [sys.executable, "-m", "forgeline.jobs.launch", "-m", f"forgeline.jobs.{self.stage}",
                "--config", str(self.config_path)]  # fmt: skip

    def environment(self, node_rank: int, port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(
            PYTHONSAFEPATH="1",
            PYTHONUNBUFFERED="1",
            HF_HUB_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        )
        # The torchrun contract (api/torchrun.py), as the operator sets it on pods.
        env.update(
            {
                torchrun.PET_NNODES: str(self.nodes),
                torchrun.PET_NPROC_PER_NODE: str(self.procs),
                torchrun.PET_NODE_RANK: str(node_rank),
                torchrun.PET_MASTER_ADDR: "127.0.0.1",
                torchrun.PET_MASTER_PORT: str(port),
                torchrun.PET_RDZV_ID: self.rdzv_id,
            }
        )
        return env

    def run(self, on_event: Callable[[dict[str, Any]], None]) -> GangResult:
        """Start every agent, stream node 0's JSON events to `on_event`, wait for all."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        result = GangResult(exit_code=0)
        readers = []
        try:
            for rank in range(self.nodes):
                log = self.log_prefix.with_name(f"{self.log_prefix.name}-node{rank}.log")
                proc = subprocess.Popen(
                    self.command(),
                    cwd=self.workdir,
                    env=self.environment(rank, port),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
                self.processes.append(proc)
                reader = threading.Thread(
                    target=_pump, args=(proc.stdout, log, result, on_event if rank == 0 else None), daemon=True
                )
                reader.start()
                readers.append(reader)
            codes = self._wait_all()
        except BaseException:
            self.terminate()
            raise
        for reader in readers:
            reader.join(timeout=5)
        permanent = [c for c in codes if c in PERMANENT_EXIT_CODES]
        result.exit_code = permanent[0] if permanent else next((c for c in codes if c), 0)
        return result

    def _wait_all(self) -> list[int]:
        """Wait for every agent; when one fails, the rest of the gang cannot finish: stop it."""
        pending = list(self.processes)
        while pending:
            for proc in list(pending):
                try:
                    code = proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                pending.remove(proc)
                if code != 0:
                    self.terminate()
        return [p.returncode for p in self.processes]

    def terminate(self) -> None:
        """SIGTERM every agent's process group, then SIGKILL what is left after the grace period."""
        for proc in self.processes:
            _signal_group(proc, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=TERM_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        for proc in self.processes:
            _signal_group(proc, signal.SIGKILL)  # workers that outlived their agent


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _pump(
    stream: TextIO | None, log: Path, result: GangResult, on_event: Callable[[dict[str, Any]], None] | None
) -> None:
    if stream is None:
        return
    with log.open("a") as out:
        for line in stream:
            out.write(line)
            out.flush()
            if on_event is None:
                continue
            result.tail = [*result.tail[-39:], line.rstrip()]
            event = _parse_event(line)
            if event is not None:
                result.events.append(event)
                on_event(event)


def _parse_event(line: str) -> dict[str, Any] | None:
    start = line.find('{"')
    if start < 0:
        return None
    try:
        event = json.loads(line[start:])
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
