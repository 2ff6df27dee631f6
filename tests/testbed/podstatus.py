"""What the process node knows about a pod and its containers, and how it reports them.

Pure bookkeeping: the agent (processnode.py) mutates these records as processes start and exit;
:func:`pod_status` renders them as the ``.status`` a kubelet would write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from testbed import procs
from testbed.podspec import Launch, Obj


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRun:
    spec: Obj
    init: bool
    launch: Launch | None = None
    proc: procs.Proc | None = None
    started_at: str | None = None
    restart_count: int = 0
    terminated: Obj | None = None  # the last terminated state
    restart_at: float | None = None


@dataclass
class PodRun:
    pod: Obj
    ip: str
    dir: Path
    volumes: dict[str, Path] = field(default_factory=dict)
    init: list[ContainerRun] = field(default_factory=list)
    main: list[ContainerRun] = field(default_factory=list)
    phase: str = "Pending"
    start_time: str = field(default_factory=now)
    reason: str | None = None
    message: str | None = None
    kill_at: float | None = None  # SIGKILL deadline once deletion started
    terminating: bool = False
    gone: bool = False  # the API object no longer exists
    released: bool = False  # its address went back to the pool

    @property
    def key(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"

    def live(self) -> list[ContainerRun]:
        return [c for c in self.init + self.main if c.proc is not None and c.proc.alive()]


def container_status(c: ContainerRun) -> Obj:
    running = c.proc is not None and c.proc.alive()
    status: Obj = {
        "name": c.spec["name"],
        "image": c.spec.get("image") or "",
        "imageID": "",
        "restartCount": c.restart_count,
        "ready": running and not c.init,
        "started": running,
    }
    if running:
        status["state"] = {"running": {"startedAt": c.started_at}}
    elif c.terminated is not None and c.restart_at is None:
        status["state"] = {"terminated": c.terminated}
    else:
        reason = "CrashLoopBackOff" if c.terminated else "PodInitializing"
        status["state"] = {"waiting": {"reason": reason}}
        if c.terminated:
            status["lastState"] = {"terminated": c.terminated}
    return status


def pod_status(run: PodRun) -> Obj:
    """The pod's .status as a kubelet would report it (a full replacement for a merge patch)."""
    stamp = now()
    ready = run.phase == "Running" and all(c.proc is not None and c.proc.alive() for c in run.main)
    initialized = all(c.terminated is not None and c.terminated["exitCode"] == 0 for c in run.init)
    conds = [
        ("Initialized", initialized),
        ("Ready", ready),
        ("ContainersReady", ready),
        ("PodReadyToStartContainers", True),
    ]
    status: Obj = {
        "phase": run.phase,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": run.ip,
        "podIPs": [{"ip": run.ip}],
        "startTime": run.start_time,
        "conditions": [{"type": t, "status": str(v), "lastTransitionTime": stamp} for t, v in conds],
        "containerStatuses": [container_status(c) for c in run.main],
    }
    if run.init:
        status["initContainerStatuses"] = [container_status(c) for c in run.init]
    if run.reason:
        status["reason"], status["message"] = run.reason, run.message or ""
    return status
