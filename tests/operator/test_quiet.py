"""No reconcile hot loops, on the real control plane: once K running jobs have settled, the
operator sends no API request between events, and one resync period costs one pass per job,
reads only (a GET of the job, a LIST of its batch Jobs and one of its pods).

The operator's own count of its requests (forgeline_operator_api_requests_total, client.py) is
the measure, so kopf's watches, which carry the events, are not in it; leases are left out (this
operator does not elect a leader, and renewals would be no reconcile work anyway).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from testbed.kube import new_namespace, wait_for
from testbed.operator import OperatorProcess, pretrain_manifest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

JOBS = 4
RESYNC = 12.0  # seconds; a Running job also asks to be looked at again after 15 s (progress)
QUIET = 4.0  # seconds of the quiet window, well inside the resync period
READS_PER_PASS = 3  # GET the job, LIST its batch Jobs, LIST its pods
ON_KWOK_CPU = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


def counters(op: OperatorProcess) -> tuple[dict[tuple[str, str], float], float]:
    """(requests by (verb, resource) without leases, reconcile passes) from the operator's /metrics."""
    text = op.metrics()
    requests: dict[tuple[str, str], float] = {}
    for labels, value in re.findall(r"^forgeline_operator_api_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        named = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if named["resource"] != "leases":
            requests[(named["verb"], named["resource"])] = float(value)
    passes = sum(float(v) for v in re.findall(r"^forgeline_operator_reconcile_total\{[^}]*\} (\S+)$", text, re.M))
    return requests, passes


def since(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def test_a_steady_cluster_costs_one_pass_per_job_per_resync_and_nothing_between(
    cluster: Any, crds: list[str], tmp_path: Path
) -> None:
    core, custom = client.CoreV1Api(cluster.client), client.CustomObjectsApi(cluster.client)
    ns = new_namespace(core, "quiet")  # not op-*: the session's operator does not watch it
    op = OperatorProcess(
        [f"--namespace={ns}", f"--store=file://{tmp_path / 'store'}", f"--resync-seconds={RESYNC:g}",
         "--trainer-metrics-port=0", "--workers=4"],
        cluster.env(), tmp_path, name="forgeline-operator-quiet",
    )  # fmt: skip
    op.start()
    try:
        for i in range(JOBS):
            body = pretrain_manifest(f"steady-{i}", gpus=0, **ON_KWOK_CPU)
            custom.create_namespaced_custom_object("forgeline.io", "v1alpha1", ns, "pretrainjobs", body)

        def all_running() -> bool:
            items = custom.list_namespaced_custom_object("forgeline.io", "v1alpha1", ns, "pretrainjobs")["items"]
            return sum((o.get("status") or {}).get("state") == "Running" for o in items) == JOBS

        wait_for(all_running, timeout=60, what=f"{JOBS} jobs Running")

        # Settled: no pass for a second (the last pod and Job events have been folded in).
        last = [counters(op)[1], time.monotonic()]

        def settled() -> bool:
            passes = counters(op)[1]
            if passes != last[0]:
                last[:] = [passes, time.monotonic()]
            return time.monotonic() - last[1] >= 1.0

        wait_for(settled, timeout=30, what="the operator to settle", interval=0.1)
        start, _ = counters(op)
        started = time.monotonic()
        # Every job's last pass was within the span before `started`; its next is a resync
        # period after it. Nothing may happen in between: no event, no pass, no request.
        time.sleep(QUIET)
        quiet, quiet_passes = counters(op)
        assert since(start, quiet) == {}, f"requests between events: {since(start, quiet)}\n{op.log()}"

        # Over one resync period from the settle: one pass per job, reads only.
        time.sleep(max(0.0, RESYNC - (time.monotonic() - started)))
        resynced = wait_for(lambda: counters(op) if counters(op)[1] - quiet_passes >= JOBS else None,
                            timeout=RESYNC, what=f"a resync pass of each of {JOBS} jobs")  # fmt: skip
        requests, passes = resynced[0], resynced[1] - quiet_passes
        spent = since(quiet, requests)
        assert passes == JOBS, f"{passes} passes over one resync period of {JOBS} steady jobs"
        assert {verb for verb, _ in spent} <= {"GET", "LIST"}, f"a steady pass wrote: {spent}"
        assert sum(spent.values()) == READS_PER_PASS * JOBS, spent
    finally:
        op.stop()
        custom.delete_collection_namespaced_custom_object("forgeline.io", "v1alpha1", ns, "pretrainjobs")
        core.delete_namespace(ns)
