"""The operator's own Prometheus metrics (training metrics come from the pods, not from here).

No per-job labels: a label per job name grows without bound (JobSet's jobset_failed_total has one);
per-job detail lives in status and Events. Names follow prometheus.io/docs/practices/naming.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from forgeline.api.kinds import KINDS, STATES

FINISHED_RESULTS = ("Succeeded", "Failed")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.reconciles = Counter(
            "forgeline_operator_reconcile", "Reconcile passes by kind and result", ["kind", "result"], registry=registry
        )
        self.errors = Counter(
            "forgeline_operator_reconcile_errors", "Reconcile passes that raised, by kind", ["kind"], registry=registry
        )
        self.duration = Histogram(
            "forgeline_operator_reconcile_duration_seconds",
            "Wall time of one reconcile pass",
            ["kind"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.jobs = Gauge("forgeline_operator_jobs", "Jobs by kind and state", ["kind", "state"], registry=registry)
        self.restarts = Counter(
            "forgeline_operator_restarts", "Gang restarts by kind and reason", ["kind", "reason"], registry=registry
        )
        # Counted once per job, on the transition to a terminal state (alerts take increase() of it).
        self.finished = Counter(
            "forgeline_jobs_finished", "Jobs that finished, by kind and result", ["kind", "result"], registry=registry
        )
        for kind in KINDS:  # every series from zero, so increase() sees the first one finish
            for result in FINISHED_RESULTS:
                self.finished.labels(kind, result)
        self.gang_startup = Histogram(
            "forgeline_operator_gang_startup_seconds",
            "From an attempt's Job creation to all of its pods Running",
            ["kind"],
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.handoff = Histogram(
            "forgeline_operator_stage_handoff_seconds",
            "From the last upstream's completion to the downstream's first attempt created",
            ["kind"],
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.leader = Gauge(
            "forgeline_operator_leader",
            "1 on the replica that holds the leader-election lease (and reconciles), 0 on a standby",
            registry=registry,
        )
        # What the operator asks of the API server (client.py counts every request it sends;
        # kopf's watches are not among them). Resource is the plural, never an object's name.
        self.api_requests = Counter(
            "forgeline_operator_api_requests",
            "API requests the operator sent, by verb (GET, LIST, PATCH, POST, PUT, DELETE) and resource",
            ["verb", "resource"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "forgeline_operator_queue_depth",
            "Jobs due for a reconcile pass and not yet started (not those waiting for a later look)",
            registry=registry,
        )
        self._registry = registry
        self._states: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._leading = True  # without leader election the one replica publishes
        self._lock = threading.Lock()
        self.leader.set(1)
        self._publish()

    def observe_state(self, key: tuple[str, str, str], state: str | None) -> None:
        """Track one job's state (None: the job is gone) and refresh the gauge."""
        with self._lock:
            if state is None:
                self._states.pop(key, None)
            else:
                self._states[key] = (key[0], state)
            self._publish()

    def api_request(self, verb: str, resource: str) -> None:
        """One API request sent (client.KubeClient's on_request)."""
        self.api_requests.labels(verb, resource).inc()

    def watch_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth when scraped (the work queue's `depth`)."""
        self.queue_depth.set_function(depth)

    def job_finished(self, kind: str, result: str) -> None:
        """One job reached Succeeded or Failed (reconcile calls this once per job)."""
        self.finished.labels(kind, result).inc()

    def set_leader(self, leading: bool) -> None:
        """Only the leader publishes the jobs gauge (a standby tracks the same states and shows
        zeros), so `sum by (state)` over the replicas counts each job once, across a failover too."""
        with self._lock:
            self._leading = leading
            self.leader.set(1 if leading else 0)
            self._publish()

    def _publish(self) -> None:
        tally = Tally(self._states.values()) if self._leading else Tally()
        for kind in KINDS:
            for known in STATES:
                self.jobs.labels(kind, known).set(tally.get((kind, known), 0))

    def serve(
        self,
        port: int,
        addr: str = "0.0.0.0",
        *,
        ready: Callable[[], bool] = lambda: True,
        leading: Callable[[], bool] = lambda: True,
    ) -> Any:
        """Serve /metrics, /readyz (the kubelet's readiness probe) and /leader (200 only on the
        replica that reconciles) on one port, from a daemon thread."""
        metrics = make_wsgi_app(self._registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path in ("/readyz", "/leader"):
                ok = (ready if path == "/readyz" else leading)()
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"ok\n" if ok else b"not ready\n" if path == "/readyz" else b"standby\n"]
            return metrics(environ, start_response)

        server = make_server(addr, port, app, _ThreadingServer, _QuietHandler)
        threading.Thread(target=server.serve_forever, name="forgeline-metrics", daemon=True).start()
        return server


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no access log
        pass
