"""Leader election on a coordination.k8s.io/v1 Lease: the contract of client-go's leaderelection,
which controller-runtime uses, so the flags mean what they mean there.

* A candidate reads the Lease every retry period. It may take it when it is free (no holder, or
  released) or when the record has not changed for a whole lease duration, measured on the
  candidate's own monotonic clock from when it last saw the record change. Holder clocks are
  never compared: renewTime is written for people, not read for decisions.
* Every write is an update guarded by the resourceVersion just read (or a create, which fails
  when the Lease exists), so of two candidates racing for the same record the API server lets
  exactly one win; the other gets 409 and tries again a retry period later.
* The leader renews every retry period. It acts only until the start of its last successful
  renewal plus the renew deadline (shorter than the lease duration): past that it stops at once,
  and the process exits non-zero so that its pod restarts as a standby, as controller-runtime's
  manager does. A standby waits at least a lease duration from a change it saw after that
  renewal was sent, so the old leader has stopped for lease-duration minus renew-deadline
  (5 s with the defaults) before anyone else may start: no two writers.
* Writes are fenced too (FencedPort): reconcile's writes go through a check of the same deadline
  on the monotonic clock, so a worker thread that wakes after a pause (a stopped process, a long
  GC) cannot write before the elector thread has noticed. What stays open, here as in
  controller-runtime, is a request already on the wire when the deadline passes; status writes
  carry resourceVersion preconditions, so such a late write fails rather than overwrites.

Standbys run kopf too (the watches are warm, the work queue fills with every job), but their
controller does not dispatch reconcile passes until they lead: taking over is then one queue
start, not a re-list of the cluster, and the first pass looks at every job, like a restart.
On SIGTERM a leader stops its workers and releases the Lease (holder cleared), so a rolling
update hands over in about a retry period instead of a lease duration.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

Obj = dict[str, Any]
log = logging.getLogger(__name__)

LOST_LEASE_EXIT = 1  # what controller-runtime's manager exits with when the lease is lost
JITTER = 1.2  # client-go's JitterFactor: a candidate waits retry_period * [1, 1.2) between tries


class LeaseApi(Protocol):
    """The part of client.KubeClient the elector uses (its `request`)."""

    def request(self, method: str, path: str, *, body: Any = None, missing_ok: bool = False) -> Obj | None: ...


@dataclass(frozen=True)
class LeaseSettings:
    """Where the Lease is and the three timings (seconds), checked the way client-go checks them."""

    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if self.retry_period <= 0:
            raise ValueError(f"--retry-period must be positive, got {self.retry_period}")
        if self.renew_deadline <= JITTER * self.retry_period:
            raise ValueError(
                f"--renew-deadline ({self.renew_deadline}s) must be more than {JITTER} x --retry-period "
                f"({self.retry_period}s), or a single slow try loses the lease"
            )
        if self.lease_duration <= self.renew_deadline:
            raise ValueError(
                f"--lease-duration ({self.lease_duration}s) must be more than --renew-deadline "
                f"({self.renew_deadline}s): the difference is the time between the old leader stopping "
                "and a standby starting"
            )
        if not self.namespace or not self.name or not self.identity:
            raise ValueError("leader election needs a namespace, a lease name and an identity")

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{quote(self.namespace)}/leases/{quote(self.name)}"


def default_identity() -> str:
    """The pod's name (the hostname in a pod) and a random suffix, as controller-runtime makes it:
    a restarted container never mistakes its predecessor's lease for its own."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def micro_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaign for the Lease in a thread; call `on_started` once leading and `on_stopped` when the
    lease is lost (then exit the process, unless `exit_on_loss` is off, as in tests)."""

    def __init__(
        self,
        api: LeaseApi,
        settings: LeaseSettings,
        *,
        exit_on_loss: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.settings = settings
        self.exit_on_loss = exit_on_loss
        self.clock = clock
        self._lock = threading.Lock()
        self._valid_until = float("-inf")  # monotonic; act only before this
        self._observed: Obj | None = None  # the lease spec last seen
        self._observed_at = float("-inf")  # monotonic time it was seen to change
        self._seen_at = float("-inf")  # monotonic time of the last successful read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()

    # -- state ------------------------------------------------------------------------------
    def is_leader(self) -> bool:
        with self._lock:
            return self.clock() < self._valid_until

    def following(self) -> bool:
        """A healthy candidate: leads, or has read the Lease within a lease duration."""
        with self._lock:
            return self.clock() < max(self._valid_until, self._seen_at + self.settings.lease_duration)

    def holder(self) -> str | None:
        with self._lock:
            return (self._observed or {}).get("holderIdentity") or None

    # -- the campaign -----------------------------------------------------------------------
    def start(self, on_started: Callable[[], None], on_stopped: Callable[[], None] = lambda: None) -> None:
        self._thread = threading.Thread(
            target=self.run, args=(on_started, on_stopped), name="forgeline-leader-election", daemon=True
        )
        self._thread.start()

    def run(self, on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        s = self.settings
        log.info("candidate %s for lease %s/%s", s.identity, s.namespace, s.name)
        while not self._stop.is_set():
            if self.try_acquire_or_renew() and self.is_leader():
                break
            self._stop.wait(s.retry_period * random.uniform(1.0, JITTER))
        else:
            return
        log.info("%s leads (lease %s/%s)", s.identity, s.namespace, s.name)
        on_started()
        while not self._stop.wait(s.retry_period):
            self.try_acquire_or_renew()
            if not self.is_leader() and not self._stop.is_set():
                break
        else:
            return
        log.error(
            "%s lost lease %s/%s (no renewal within %.1fs; holder now %s): stopping",
            s.identity, s.namespace, s.name, s.renew_deadline, self.holder(),
        )  # fmt: skip
        self.lost.set()
        on_stopped()
        if self.exit_on_loss:
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            os._exit(LOST_LEASE_EXIT)

    def try_acquire_or_renew(self) -> bool:
        """One try (client-go's tryAcquireOrRenew). True: this candidate holds the lease now."""
        s = self.settings
        started = self.clock()
        now = micro_time(datetime.now(UTC))
        try:
            lease = self.api.request("GET", s.path, missing_ok=True)
        except Exception as exc:
            log.warning("reading lease %s/%s failed: %s", s.namespace, s.name, exc)
            return False
        if lease is None:
            spec = self._spec(now, now, 0)
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": s.name}, "spec": spec}
            return self._write("POST", s.path.rsplit("/", 1)[0], body, spec, started)
        current: Obj = lease.get("spec") or {}
        with self._lock:
            self._seen_at = started
            if current != self._observed:
                self._observed, self._observed_at = current, started
            observed_at = self._observed_at
        holder = current.get("holderIdentity") or ""
        duration = float(current.get("leaseDurationSeconds") or s.lease_duration)
        if holder and holder != s.identity and started < observed_at + duration:
            return False
        if holder == s.identity:
            spec = self._spec(current.get("acquireTime") or now, now, int(current.get("leaseTransitions") or 0))
        else:
            spec = self._spec(now, now, int(current.get("leaseTransitions") or 0) + 1)
        body = {**lease, "spec": spec}  # metadata keeps resourceVersion: the update's precondition
        return self._write("PUT", s.path, body, spec, started)

    def _spec(self, acquired: str, renewed: str, transitions: int) -> Obj:
        return {
            "holderIdentity": self.settings.identity,
            "leaseDurationSeconds": max(1, math.ceil(self.settings.lease_duration)),  # never shorter
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }

    def _write(self, method: str, path: str, body: Obj, spec: Obj, started: float) -> bool:
        try:
            written = self.api.request(method, path, body=body)
        except Exception as exc:
            # 409: another candidate wrote first (or the lease appeared); try again next period.
            level = logging.DEBUG if getattr(exc, "status", None) == 409 else logging.WARNING
            log.log(level, "%s of lease %s failed: %s", method, self.settings.name, exc)
            return False
        with self._lock:
            self._observed = (written or {}).get("spec") or spec
            self._observed_at = self._seen_at = started
            if not self._stop.is_set():  # a renewal that lands after release() began does not count
                # Measured from before the request went out: a standby saw the write after that.
                self._valid_until = max(self._valid_until, started + self.settings.renew_deadline)
        return True

    def release(self) -> None:
        """Give the lease up (clean shutdown): a standby takes it at its next try. Call only once
        the workers have stopped; the fence closes first, so nothing writes after this."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.settings.renew_deadline)  # no renewal racing the release
        with self._lock:
            leading, self._valid_until = self.clock() < self._valid_until, float("-inf")
        if not leading:
            return
        s = self.settings
        try:
            lease = self.api.request("GET", s.path, missing_ok=True)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != s.identity:
                return
            now = micro_time(datetime.now(UTC))
            spec = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": now}
            self.api.request("PUT", s.path, body={**lease, "spec": spec})
            log.info("%s released lease %s/%s", s.identity, s.namespace, s.name)
        except Exception as exc:
            log.warning("releasing lease %s/%s failed (it expires instead): %s", s.namespace, s.name, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class NotLeader(RuntimeError):
    """A write refused because this replica's leadership has lapsed."""


class FencedPort:
    """A ClusterPort (reconcile.py) whose writes go through only while `may_write()` is true;
    reads pass through. Wraps client.KubeClient in every leader-elected operator."""

    def __init__(self, port: Any, may_write: Callable[[], bool]) -> None:
        self._port = port
        self._may_write = may_write

    def _check(self, what: str) -> None:
        if not self._may_write():
            log.warning("refused %s: not the leader", what)
            raise NotLeader(f"refused {what}: this replica is not the leader")
        log.debug("leader write: %s", what)

    # reads
    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._port.get(kind, namespace, name)

    def list_children(
        self, kind: str, namespace: str, selector: dict[str, str], since: str | None = None
    ) -> tuple[list[Obj], str | None]:
        listed: tuple[list[Obj], str | None] = self._port.list_children(kind, namespace, selector, since)
        return listed

    def scrape(self, url: str) -> str | None:
        return self._port.scrape(url)

    # writes
    def apply(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        self._check(f"apply {obj.get('kind')} {meta.get('namespace')}/{meta.get('name')}")
        self._port.apply(obj)

    def create(self, obj: Obj) -> str | None:
        meta = obj.get("metadata") or {}
        self._check(f"create {obj.get('kind')} {meta.get('namespace')}/{meta.get('name')}")
        made: str | None = self._port.create(obj)
        return made

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self._check(f"delete {kind} {namespace}/{name}")
        self._port.delete(api_version, kind, namespace, name)

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj, resource_version: str) -> str | None:
        self._check(f"status {kind} {namespace}/{name}")
        written: str | None = self._port.patch_status(kind, namespace, name, status, resource_version)
        return written

    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        meta = involved.get("metadata") or {}
        self._check(f"event {reason} {meta.get('namespace')}/{meta.get('name')}")
        self._port.event(involved, type_, reason, message)
