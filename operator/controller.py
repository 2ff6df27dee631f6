"""The controller: reconcile behind a work queue, with the operator's metrics and the chain index.

handlers.py (kopf) only reports what changed; this module decides which jobs to look at:

* a job object changed: that job;
* a batch Job or pod of ours changed: the job named by its labels;
* an upstream appeared, went away, or changed state (or why it waits): every job whose fromJob
  names it, at once, which keeps the stage hand-off under a second instead of waiting for a
  resync, and lets a cycle be reported on every member as soon as it closes;
* otherwise each job is looked at again after the delay its last pass asked for (a deadline, a
  TTL, the next progress scrape) or after the resync period, whichever comes first.

The watch event of the operator's own status write is not a reason to look again: it carries
what the pass that wrote it already decided (its resourceVersion is the one that write returned;
any other writer's change makes a different one, and a write on top of someone else's fails its
resourceVersion precondition first; an event that comes while its job's pass still runs, often
ahead of the write's own answer, is judged when the pass ends). Without this every pass that
changes status paid for a second, idle one. A steady cluster therefore costs one pass per job
per resync period, and nothing between events.

With leader election (leader.py) the controller is also where leadership takes effect: its
writes go through the elector's fence, and its work queue dispatches only while it leads. A
standby's queue still fills from kopf's events, so taking over starts with a pass over every job.

No kopf here, so the same controller runs under a plain test harness too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from forgeline.api.chain import references_of
from forgeline.api.kinds import KINDS
from forgeline.api.validate import parse_job
from forgeline.operator.decide import Plan
from forgeline.operator.leader import FencedPort, LeaderElector, NotLeader
from forgeline.operator.metrics import OperatorMetrics
from forgeline.operator.policies.inputs import UriCheck
from forgeline.operator.reconcile import ClusterPort, Reconciler
from forgeline.operator.render import LABEL_JOB, LABEL_KIND, RenderSettings
from forgeline.operator.workqueue import WorkQueue

Key = tuple[str, str, str]  # (kind, namespace, name)
CHILD_BATCH = 0.2  # seconds
CONCURRENT_REQUESTS = 8  # in flight at once for the independent steps of passes (reconcile.py)
Obj = dict[str, Any]
log = logging.getLogger(__name__)


class Controller:
    def __init__(
        self,
        port: ClusterPort,
        settings: RenderSettings,
        *,
        metrics: OperatorMetrics | None = None,
        workers: int = 4,
        resync_seconds: float = 60.0,
        check_uri: Callable[[str], UriCheck] | None = None,
        elector: LeaderElector | None = None,
    ) -> None:
        self.metrics = metrics
        self.resync_seconds = resync_seconds
        self.elector = elector
        self._started = threading.Event()
        if elector is not None:
            port = FencedPort(port, elector.is_leader)
            self._observe_leadership(False)  # a standby until the lease says otherwise
        self.reconciler = Reconciler(
            port,
            settings,
            on_plan=self._observe_plan,
            check_uri=check_uri,
            on_finished=metrics.job_finished if metrics is not None else None,
            concurrent_requests=CONCURRENT_REQUESTS,
        )
        self.queue: WorkQueue[Key] = WorkQueue(self._work, workers=workers)
        if metrics is not None:
            metrics.watch_queue(self.queue.depth)
        self._lock = threading.Lock()
        self._dependents: dict[Key, set[Key]] = defaultdict(set)  # upstream -> downstream jobs
        self._upstreams: dict[Key, set[Key]] = {}  # downstream -> its upstreams
        self._seen: dict[Key, tuple[Any, Any]] = {}  # job -> (state, InputsReady reason) last seen
        self._passing: set[Key] = set()  # jobs a pass is running for
        # job -> the resourceVersion of its latest event during its pass, told apart at the end
        self._during: dict[Key, str | None] = {}

    def start(self) -> None:
        """Dispatch reconcile passes now, or (leader-elected) once this replica leads."""
        if self.elector is None:
            self._lead()
        else:
            self.elector.start(on_started=self._lead, on_stopped=lambda: self._observe_leadership(False))

    def stop(self) -> None:
        """Clean shutdown: finish the passes in flight, then give the lease up."""
        self.queue.stop()
        if self.elector is not None:
            self.elector.release()
            self._observe_leadership(False)

    def _lead(self) -> None:
        self._observe_leadership(True)
        self.queue.start()
        self._started.set()

    def _observe_leadership(self, leading: bool) -> None:
        if self.metrics is not None:
            self.metrics.set_leader(leading)

    def ready(self) -> bool:
        """Readiness: started, and (leader-elected) a leader or a standby that follows the lease."""
        if self.elector is None:
            return self._started.is_set()
        return self.elector.following()

    def leading(self) -> bool:
        return self._started.is_set() if self.elector is None else self.elector.is_leader()

    # -- what kopf reports ------------------------------------------------------------------
    def job_changed(self, body: Obj, deleted: bool = False) -> None:
        meta = body.get("metadata") or {}
        key: Key = (str(body.get("kind")), str(meta.get("namespace", "default")), str(meta.get("name")))
        if key[0] not in KINDS:
            return
        if deleted:
            self._index(key, None)
            self.reconciler.forget(key)
            if self.metrics is not None:
                self.metrics.observe_state(key, None)
        else:
            self._index(key, body)
            version = meta.get("resourceVersion")
            if version is None or version != self.reconciler.written.get(key):
                with self._lock:
                    during = key in self._passing
                    if during:  # perhaps the echo of the status write whose answer is on its way
                        self._during[key] = version
                if not during:
                    self.queue.add(key)  # not the echo of our own status write
        # Downstream jobs read their upstreams' state (and name it in their InputsReady message):
        # look at them again whenever that changes, not on every progress write.
        status: Obj = body.get("status") or {}
        inputs: Obj = next((c for c in status.get("conditions") or [] if c.get("type") == "InputsReady"), {})
        seen = (status.get("state"), inputs.get("reason"))
        with self._lock:
            dependents = list(self._dependents.get(key, ()))
            changed = deleted or seen[0] is None or self._seen.get(key) != seen
            if deleted:
                self._seen.pop(key, None)
            else:
                self._seen[key] = seen
        if changed:
            for downstream in dependents:
                self.queue.add(downstream)

    def child_changed(self, body: Obj) -> None:
        """A pod or batch Job of ours changed. A gang of 64 pods sends hundreds of these within a
        second; waiting CHILD_BATCH seconds folds each burst into one pass. Only for a job this
        operator serves (one kopf has reported): the children's watches may see more namespaces than
        --namespace names (handlers.py), and another operator's jobs are not ours to look at."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        kind, name = labels.get(LABEL_KIND), labels.get(LABEL_JOB)
        if kind not in KINDS or not name:
            return
        key: Key = (str(kind), str(meta.get("namespace", "default")), str(name))
        with self._lock:
            served = key in self._upstreams
        if served:
            self.queue.add(key, CHILD_BATCH)

    # -- the work ---------------------------------------------------------------------------
    def _work(self, key: Key) -> float | None:
        kind = key[0]
        started = time.perf_counter()
        with self._lock:
            self._passing.add(key)
        try:
            again = self.reconciler.reconcile(*key)
        except NotLeader:
            return None  # leadership lapsed mid-pass: the elector is stopping this process
        except Exception as exc:
            if getattr(exc, "status", None) == 409:
                # The object changed between our read and our status write: not an error, the
                # pass simply runs again on fresh data.
                if self.metrics is not None:
                    self.metrics.reconciles.labels(kind, "conflict").inc()
                return 0.0
            if self.metrics is not None:
                self.metrics.reconciles.labels(kind, "error").inc()
                self.metrics.errors.labels(kind).inc()
            raise
        finally:
            self._passed(key)
            if self.metrics is not None:
                self.metrics.duration.labels(kind).observe(time.perf_counter() - started)
        if self.metrics is not None:
            self.metrics.reconciles.labels(kind, "success").inc()
        if again is None and not self._gone(key):
            again = self.resync_seconds
        return None if again is None else min(again, self.resync_seconds)

    def _passed(self, key: Key) -> None:
        """A pass ended: look again if the object changed during it, unless the latest change was
        the pass's own status write (its watch event can arrive before the write's answer). Any
        change after the pass read the object made that write fail its resourceVersion check, so
        the latest event's version is the one to compare."""
        with self._lock:
            self._passing.discard(key)
            if key not in self._during:
                return
            version = self._during.pop(key)
        if version is None or version != self.reconciler.written.get(key):
            self.queue.add(key)

    def _gone(self, key: Key) -> bool:
        with self._lock:
            return key not in self._upstreams

    def _observe_plan(self, kind: str, old_status: Obj, plan: Plan) -> None:
        if self.metrics is None:
            return
        if plan.restart_reason:
            self.metrics.restarts.labels(kind, plan.restart_reason).inc()
        if plan.gang_started_after is not None:
            self.metrics.gang_startup.labels(kind).observe(plan.gang_started_after)
        if plan.handoff_seconds is not None:
            self.metrics.handoff.labels(kind).observe(plan.handoff_seconds)

    def _index(self, key: Key, body: Obj | None) -> None:
        """Keep upstream -> downstream links (from spec fromJob references) for hand-offs."""
        upstreams: set[Key] = set()
        if body is not None:
            try:
                job = parse_job(body)
            except Exception:  # any object, however odd: its own pass marks it Failed with the cause
                job = None
            if job is not None:
                # The namespace is part of every key: a fromJob names a job of its own namespace only.
                upstreams = {(r.upstream.kind, key[1], r.upstream.name) for r in references_of(job) if r.upstream}
            status = body.get("status")
            state = status.get("state") if isinstance(status, dict) else None
            if self.metrics is not None and isinstance(state, str) and state:
                self.metrics.observe_state(key, state)
        with self._lock:
            for old in self._upstreams.pop(key, set()):
                self._dependents[old].discard(key)
                if not self._dependents[old]:  # names come and go: keep only live links
                    del self._dependents[old]
            if body is not None:
                self._upstreams[key] = upstreams
                for up in upstreams:
                    self._dependents[up].add(key)
