"""The operator's own Prometheus metrics (training metrics come from the pods, not from here).

No per-job labels: a label per job name grows without bound (JobSet's jobset_failed_total has one);
per-job detail lives in status and Events. Names follow prometheus.io/docs/practices/naming.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from forgeline.api.kinds import KINDS, STATES

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
        self._states: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()
        for kind in KINDS:
            for state in STATES:
                self.jobs.labels(kind, state).set(0)

    def observe_state(self, key: tuple[str, str, str], state: str | None) -> None:
        """Track one job's state (None: the job is gone) and refresh the gauge."""
        with self._lock:
            if state is None:
                self._states.pop(key, None)
            else:
                self._states[key] = (key[0], state)
            tally = Tally(self._states.values())
            for kind in KINDS:
                for known in STATES:
                    self.jobs.labels(kind, known).set(tally.get((kind, known), 0))

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        return start_http_server(port, addr=addr)
