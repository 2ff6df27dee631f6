"""The fault campaign's driver: a pipeline through the operator, faults from a schedule, a ledger.

The driver injects the faults of a schedule (schedule.py) one after another, each when its moment
comes (a running gang, a checkpoint save starting, a hand-off, a stage near its commit), and
waits for each to take effect before the next (a killed gang restarted, the operator live again,
the store back). Between and during waits it watches for the opportunistic ones: a hand-off
(kill the new stage's first gang as it starts) and the armed operator kills, oldest first, one of
which fires on the watch thread the instant a new attempt's batch Job appears (its children
applied, the pass not yet finished).

Every watch event of the pods, the batch Jobs (testbed.gangs.WatchRecorder) and the pipeline's
own objects is kept, so the end checks read the whole history: no attempt with two Jobs or two
gangs, every new attempt explained by its Restarting condition, evictions apart from restarts.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chaos.schedule import Fault
from kubernetes import client, watch
from testbed.gangs import Sighting, WatchRecorder, launcher_process, trainer_processes
from testbed.operator import OperatorProcess

GROUP, VERSION = "forgeline.io", "v1alpha1"


@dataclass
class Injected:
    fault: Fault
    t: float
    target: str  # job/pod, or what it hit
    note: str = ""


@dataclass
class StatusEvent:
    t: float
    job: str
    attempt: int
    restarts: int
    evictions: int
    state: str
    restarting: dict[str, Any] | None  # the Restarting condition as the event showed it


@dataclass
class Ledger:
    injected: list[Injected] = field(default_factory=list)
    missed: list[tuple[Fault, str]] = field(default_factory=list)
    statuses: list[StatusEvent] = field(default_factory=list)
    apiserver_away: list[float] = field(default_factory=list)

    def count(self, kind: str, moment: str | None = None) -> int:
        return sum(i.fault.kind == kind and (moment is None or i.fault.moment == moment) for i in self.injected)


class Pipeline:
    """What the driver knows of the jobs: names, kinds, upstreams, gang sizes, steps."""

    def __init__(self, manifests: list[dict[str, Any]], plurals: dict[str, str]) -> None:
        self.manifests = {m["metadata"]["name"]: m for m in manifests}
        self.plurals = plurals
        self.nodes = {n: int(m["spec"].get("resources", {}).get("nodes", 1)) for n, m in self.manifests.items()}

    def upstreams(self, name: str) -> set[str]:
        found: set[str] = set()

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                if "fromJob" in value and isinstance(value["fromJob"], dict):
                    found.add(str(value["fromJob"]["name"]))
                for v in value.values():
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)

        walk(self.manifests[name]["spec"])
        return found


class Driver:
    def __init__(
        self,
        *,
        cluster: Any,
        s3: Any,
        operator: OperatorProcess,
        ns: str,
        pipeline: Pipeline,
        seed: int,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cluster, self.s3, self.operator, self.ns, self.pipeline = cluster, s3, operator, ns, pipeline
        self.rng = random.Random(seed + 1)  # the run's own choices (which gang), apart from the schedule
        self.log = log
        self.ledger = Ledger()
        self.custom: Any = client.CustomObjectsApi(cluster.client)
        self.core = client.CoreV1Api(cluster.client)
        # Armed after-apply kills, oldest first, each with when it was armed; one fires per new
        # attempt's Job, and never while the operator is still down from the one before.
        self._armed: list[tuple[Fault, float]] = []
        self._armed_lock = threading.Lock()
        self._operator_killed = threading.Event()
        self._operator_down = threading.Event()
        self._seen_jobs: set[str] = set()
        self._handoffs_pending: list[Fault] = []
        self._handoffs_done: set[str] = set()
        self._stop = threading.Event()
        self.recorder = WatchRecorder(cluster.api_client, ns, on_sighting=self._on_sighting)
        self._status_threads = [
            threading.Thread(target=self._watch_jobs, args=(plural,), daemon=True)
            for plural in set(pipeline.plurals.values())
        ]

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.recorder.start()
        for t in self._status_threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self.recorder.stop()

    # -- observation ---------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        plural = self.pipeline.plurals[name]
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name).get("status") or {})

    def states(self) -> dict[str, str | None]:
        return {n: self.status(n).get("state") for n in self.pipeline.manifests}

    def done(self) -> bool:
        return all(s in ("Succeeded", "Failed") for s in self.states().values())

    def _watch_jobs(self, plural: str) -> None:
        api = self.custom
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listing = api.list_namespaced_custom_object(GROUP, VERSION, self.ns, plural)
                    for item in listing["items"]:
                        self._on_status(item)
                    rv = listing["metadata"]["resourceVersion"]
                for ev in watch.Watch().stream(
                    api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.ns,
                    plural,
                    resource_version=rv,
                    timeout_seconds=30,
                ):
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        rv = None if obj.get("code") == 410 else rv
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._on_status(obj)
                    if self._stop.is_set():
                        return
            except Exception:  # the API server away, or "too old" (410) after its restart: list again
                if self._stop.is_set():
                    return
                rv = None
                self._stop.wait(0.2)

    def _on_status(self, obj: dict[str, Any]) -> None:
        status = obj.get("status") or {}
        restarting = next((c for c in status.get("conditions") or [] if c.get("type") == "Restarting"), None)
        self.ledger.statuses.append(
            StatusEvent(
                time.monotonic(),
                obj["metadata"]["name"],
                int(status.get("attempt") or 0),
                int(status.get("restarts") or 0),
                int(status.get("evictions") or 0),
                str(status.get("state") or ""),
                restarting,
            )
        )

    def latest_attempt(self, job: str) -> tuple[int, str] | None:
        """(attempt, batch Job name) of the newest attempt the watch has seen for `job`."""
        jobs = [s for s in self.recorder.snapshot() if s.kind == "Job" and s.job == job]
        if not jobs:
            return None
        newest = max(jobs, key=lambda s: s.attempt)
        return newest.attempt, newest.name

    def gang_pods(self, job: str, attempt: int) -> dict[str, Sighting]:
        """index -> the latest sighting of each pod of one attempt (live or not)."""
        latest: dict[str, Sighting] = {}
        for s in self.recorder.snapshot():
            if s.kind == "Pod" and s.job == job and s.attempt == attempt and s.index:
                latest[s.uid] = s
        return {s.index: s for s in latest.values() if not s.gone}

    def rank0_events(self, job: str, attempt: int) -> list[dict[str, Any]]:
        pod = self.gang_pods(job, attempt).get("0")
        if pod is None:
            return []
        try:
            text = self.cluster.process_node.read_log(self.ns, pod.name)
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            at = line.find('{"event"')
            if at >= 0:
                try:
                    found.append(json.loads(line[at:]))
                except json.JSONDecodeError:
                    continue
        return found

    def running_gangs(self) -> list[tuple[str, int, str]]:
        """(job, attempt, batch Job name) of every gang whose pods all run and whose rank 0 trains."""
        found = []
        for job in self.pipeline.manifests:
            latest = self.latest_attempt(job)
            if latest is None:
                continue
            attempt, batch = latest
            pods = self.gang_pods(job, attempt)
            if len(pods) < self.pipeline.nodes[job] or any(p.phase != "Running" for p in pods.values()):
                continue
            if any(e["event"] == "progress" and e.get("loss") is not None for e in self.rank0_events(job, attempt)):
                found.append((job, attempt, batch))
        return found

    # -- waiting, with the opportunistic faults in between ---------------------------------------
    def wait(self, check: Callable[[], Any], *, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            try:
                value = check()
            except Exception:  # the API server restarting, a log not there yet: not yet
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"campaign: timed out after {timeout:.0f}s waiting for {what}; {self.states()}")
            time.sleep(0.05)

    def tick(self) -> None:
        if self._operator_killed.is_set():
            self._operator_killed.clear()
            fault = self._armed_fault_fired
            self._restart_operator(fault)
            self._operator_down.clear()
        if self._handoffs_pending:
            self._maybe_handoff()

    # -- the faults ----------------------------------------------------------------------------
    def run(self, faults: list[Fault], timeout_each: float) -> None:
        self._handoffs_pending = [f for f in faults if f.moment == "handoff"]
        for fault in (f for f in faults if f.moment != "handoff"):
            if self.done():
                self.ledger.missed.append((fault, "the pipeline finished first"))
                continue
            try:
                self.inject(fault, timeout_each)
            except AssertionError as exc:
                if self.done():
                    self.ledger.missed.append((fault, "the pipeline finished first"))
                    continue
                raise AssertionError(f"{fault.describe()}: {exc}") from None
        # The opportunistic faults still waiting get until the pipeline ends to find their moment.
        self.wait(
            lambda: (not self._armed and not self._handoffs_pending) or self.done(),
            timeout=timeout_each,
            what="a hand-off or a new attempt for the faults still waiting",
        )
        with self._armed_lock:
            self.ledger.missed.extend((fault, "no new attempt after it was armed") for fault, _ in self._armed)
            self._armed.clear()
        for fault in self._handoffs_pending:
            self.ledger.missed.append((fault, "no hand-off left"))
        self._handoffs_pending = []

    def inject(self, fault: Fault, timeout: float) -> None:
        if fault.kind == "trainer":
            self._trainer(fault, timeout)
        elif fault.kind == "evict":
            self._evict(fault, timeout)
        elif fault.kind == "operator":
            self._operator(fault, timeout)
        elif fault.kind == "apiserver":
            away = self.cluster.restart_apiserver()
            self.ledger.apiserver_away.append(away)
            self._record(fault, "kube-apiserver", f"away {away:.1f}s")
        elif fault.kind == "s3-outage":
            self._outage(fault, timeout)
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")

    def _record(self, fault: Fault, target: str, note: str = "") -> None:
        self.ledger.injected.append(Injected(fault, time.monotonic(), target, note))
        self.log(f"chaos: {fault.describe()} -> {target} {note}".rstrip())

    def _signal(self, fault: Fault, hostname: str) -> bool:
        import signal as signals

        if fault.signal == signals.SIGKILL:
            victims = trainer_processes(self.ns, hostname)
        else:
            launcher = launcher_process(self.ns, hostname)
            victims = [launcher] if launcher is not None else []
        hit = False
        for victim in victims:
            try:
                victim.send_signal(fault.signal)
                hit = True
            except Exception:  # it died on its own meanwhile
                continue
        return hit

    def _await_restart(self, job: str, attempt: int, timeout: float) -> None:
        self.wait(
            lambda: (self.latest_attempt(job) or (0, ""))[0] > attempt or self.status(job).get("state") == "Succeeded",
            timeout=timeout,
            what=f"{job} to start attempt {attempt + 1}",
        )

    def _pick_gang(self, timeout: float, *, at_checkpoint: bool = False) -> tuple[str, int, str]:
        def candidate() -> tuple[str, int, str] | None:
            gangs = self.running_gangs()
            if at_checkpoint:
                gangs = [g for g in gangs if self._checkpoint_starting(g[0], g[1])]
            return self.rng.choice(gangs) if gangs else None

        return self.wait(
            candidate, timeout=timeout, what="a running gang" + (" at a checkpoint" if at_checkpoint else "")
        )

    def _checkpoint_starting(self, job: str, attempt: int) -> bool:
        """Rank 0 just logged a step that is a checkpoint step, and no checkpoint event after it."""
        interval = int(self.pipeline.manifests[job]["spec"].get("training", {}).get("checkpointInterval") or 0)
        if not interval:
            return False
        events = self.rank0_events(job, attempt)
        steps = [e for e in events if e["event"] in ("progress", "checkpoint")]
        if not steps or steps[-1]["event"] != "progress":
            return False
        last = steps[-1]
        return last.get("loss") is not None and last["step"] % interval == 0 and last["step"] < last["total"]

    def _trainer(self, fault: Fault, timeout: float) -> None:
        job, attempt, batch = self._pick_gang(timeout, at_checkpoint=fault.moment == "checkpoint")
        hostname = f"{batch}-{fault.rank}"
        if not self._signal(fault, hostname):
            self.ledger.missed.append((fault, f"{hostname}: no process to signal"))
            return
        note = ""
        if fault.moment == "checkpoint":
            steps = [e["step"] for e in self.rank0_events(job, attempt) if e["event"] == "progress"]
            note = f"(saving step {steps[-1] if steps else '?'})"
        self._record(fault, hostname, note)
        self._await_restart(job, attempt, timeout)

    def _maybe_handoff(self) -> None:
        """A stage's first gang starting while its upstreams have succeeded: kill it as it starts."""
        for job in self.pipeline.manifests:
            if job in self._handoffs_done or not self.pipeline.upstreams(job):
                continue
            latest = self.latest_attempt(job)
            if latest is None or latest[0] != 1:
                continue
            self._handoffs_done.add(job)
            fault = self._handoffs_pending.pop(0)
            deadline = time.monotonic() + 180  # its pods start, rendezvous, spawn the trainers
            while time.monotonic() < deadline:
                # The newest gang of the stage: the first may have failed on its own meanwhile.
                hostname = f"{(self.latest_attempt(job) or latest)[1]}-{fault.rank}"
                if self._signal(fault, hostname):
                    self._record(fault, hostname, f"(a starting gang of {job})")
                    return
                time.sleep(0.05)
            self.ledger.missed.append((fault, f"{job}: its trainers never appeared"))
            return

    def _evict(self, fault: Fault, timeout: float) -> None:
        job, attempt, _ = self._pick_gang(timeout)
        pod = self.gang_pods(job, attempt).get(str(fault.rank))
        if pod is None:
            self.ledger.missed.append((fault, f"{job}: rank {fault.rank} gone"))
            return
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod.name, namespace=self.ns))
        self.core.create_namespaced_pod_eviction(pod.name, self.ns, body)
        self._record(fault, pod.name)
        self._await_restart(job, attempt, timeout)

    def _operator(self, fault: Fault, timeout: float) -> None:
        if fault.moment == "after-apply":
            # Fires on the watch thread at the next new attempt's Job (a hand-off or a restart);
            # the driver goes on meanwhile, and restarts the operator when it sees it fired.
            with self._armed_lock:
                self._armed.append((fault, time.monotonic()))
            return
        self.operator.kill()
        self._record(fault, "operator")
        self._restart_operator(fault)

    def _restart_operator(self, fault: Fault) -> None:
        deadline = time.monotonic() + fault.delay
        while time.monotonic() < deadline:  # the operator stays down a moment, as a pod rescheduled
            time.sleep(0.05)
        self.operator.start()

    def _on_sighting(self, s: Sighting) -> None:
        if s.kind != "Job" or s.type != "ADDED" or s.name in self._seen_jobs:
            return
        self._seen_jobs.add(s.name)
        with self._armed_lock:
            if not self._armed or s.t < self._armed[0][1] or self._operator_down.is_set():
                return
            fault, _ = self._armed.pop(0)
            self._operator_down.set()
        self.operator.kill()
        self._record(fault, "operator", f"at {s.name} created")
        self._armed_fault_fired = fault
        self._operator_killed.set()

    _armed_fault_fired: Fault = Fault("operator", "after-apply")

    def _outage(self, fault: Fault, timeout: float) -> None:
        """Down as a checkpoint save starts (its upload and its manifest commit wait the outage
        out), for `seconds`; a stage that reaches its output commit meanwhile waits too."""
        job, _, _ = self._pick_gang(timeout, at_checkpoint=True)
        self.s3.go_down()
        began = time.monotonic()
        self._record(fault, f"store ({job} saving a checkpoint)")
        while time.monotonic() < began + fault.seconds:
            self.tick()
            time.sleep(0.05)
        self.s3.come_back()
        self.ledger.injected[-1].note = f"down {time.monotonic() - began:.1f}s"
