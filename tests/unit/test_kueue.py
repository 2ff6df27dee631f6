"""Kueue: the Workload's word in WaitingForAdmission, and Kueue's eviction of an admitted attempt
as a disruption (policies/kueue.py, decide's `_restart_evicted_by_kueue`, reconcile's one read).

The Workloads are shaped as Kueue v0.17 writes them (kueue.x-k8s.io/v1beta2): owned by the batch
Job, labelled with its uid, conditions QuotaReserved, Admitted, Evicted and Requeued; the messages
are Kueue's own wording (tests/cluster/test_kueue.py meets them on a real Kueue).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
from testbed.builders import (
    T0,
    Obj,
    batch_job,
    condition,
    gang,
    job,
    job_body,
    observed,
    stored,
    with_status,
)
from testbed.fakecluster import Harness

from forgeline.operator.client import ApiError
from forgeline.operator.decide import Plan, decide, queued_job
from forgeline.operator.policies import kueue
from forgeline.operator.render import KUEUE_QUEUE_LABEL, LABEL_ATTEMPT, Owner, RenderSettings, render_attempt

SETTINGS = RenderSettings(store="s3://store")
QUEUE = {KUEUE_QUEUE_LABEL: "team-a"}
NO_QUOTA = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu, "
    "16 more needed"
)
PREEMPTED = (
    "Preempted to accommodate a workload (UID: wl-high, JobUID: job-high) due to prioritization in the "
    "ClusterQueue; preemptor path: /gpu; preemptee path: /gpu"
)
TIMED_OUT = "Exceeded the PodsReady timeout default/job-base-pretrain-a1-3f2a1"


def workload(job_uid: str = "uid-base-pretrain-a1", *conditions: Obj, active: bool = True, **status: Any) -> Obj:
    """The Workload Kueue made for the batch Job of `job_uid`."""
    return {
        "apiVersion": kueue.API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": f"job-{job_uid}-3f2a1",
            "namespace": "default",
            "labels": {kueue.WORKLOAD_JOB_UID: job_uid},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_uid, "uid": job_uid}],
        },
        "spec": {"active": active, "queueName": "team-a"},
        "status": {"conditions": list(conditions), **status},
    }


def queued(*, nodes: int = 2, **run_policy: Any) -> Obj:
    return job_body(labels=QUEUE, resources={"nodes": nodes, "gpusPerNode": 8}, runPolicy=run_policy)


def decide_on(body: Obj, wl: Obj | None = None, **snapshot: Any) -> Plan:
    return decide(job(body), dataclasses.replace(observed(body, **snapshot), workload=wl), SETTINGS)


def batch_of(plan: Plan) -> Obj:
    return stored(next(o for o in plan.apply if o["kind"] == "Job"))


def cond(plan: Plan, type_: str) -> Obj:
    return next(c for c in plan.status["conditions"] if c["type"] == type_)


def admitted(child: Obj) -> Obj:
    return {**child, "spec": {**child["spec"], "suspend": False}}


def suspended(child: Obj) -> Obj:
    return {**child, "spec": {**child["spec"], "suspend": True}}


def running_queued(body: Obj) -> tuple[Obj, Obj]:
    """`body` after Kueue admitted attempt 1 and all its pods ran; returns (body, its Job)."""
    first = decide_on(body)
    child = batch_of(first)
    assert child["spec"]["suspend"] is True
    up = admitted(child)
    second = decide_on(with_status(body, first.status), children=[up], pods=gang(up))
    assert second.status["state"] == "Running"
    return with_status(body, second.status), up


# -- the policy, table-driven -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wl", "expected"),
    [
        (None, ""),
        (workload(), ""),  # just created: Kueue has said nothing yet
        (workload("u", condition("QuotaReserved", "Pending", "False", NO_QUOTA)), NO_QUOTA),
        (
            workload(
                "u", condition("QuotaReserved", "QuotaReserved"), condition("Admitted", "Waiting", "False", "checks")
            ),
            "checks",
        ),
        (
            workload(
                "u",
                condition("Evicted", "PodsReadyTimeout", "True", TIMED_OUT),
                condition("QuotaReserved", "Pending", "False", TIMED_OUT),
                condition("Requeued", "PodsReadyTimeout", "False", TIMED_OUT),
                requeueState={"count": 1, "requeueAt": "2026-01-01T00:00:40Z"},
            ),
            f"evicted by Kueue (PodsReadyTimeout): {TIMED_OUT}; Kueue requeues it at 2026-01-01T00:00:40Z",
        ),
        (
            workload(
                "u",
                condition("Evicted", "Preempted", "True", PREEMPTED),
                condition("QuotaReserved", "Pending", "False", NO_QUOTA),
            ),
            f"evicted by Kueue (Preempted): {PREEMPTED}; {NO_QUOTA}",
        ),
        (
            workload("u", condition("Evicted", "Deactivated", "True", "deactivated by hand"), active=False),
            "evicted by Kueue (Deactivated): deactivated by hand; Workload job-u-3f2a1 is deactivated; "
            "set its spec.active to true to queue it again",
        ),
    ],
    ids=[
        "no-workload",
        "no-conditions",
        "no-quota",
        "admission-checks",
        "pods-ready-timeout",
        "preempted",
        "deactivated",
    ],
)
def test_waiting_message_says_why_kueue_holds_the_job(wl: Obj | None, expected: str) -> None:
    assert kueue.waiting_message(wl) == expected


def test_waiting_message_is_capped() -> None:
    long = "couldn't assign flavors to pod set main: " + "flavor x: no; " * 200
    message = kueue.waiting_message(workload("u", condition("QuotaReserved", "Pending", "False", long)))
    assert len(message) == kueue.MAX_MESSAGE and message.endswith("...")


@pytest.mark.parametrize(
    ("reason", "ran", "active", "restarts"),
    [
        ("Preempted", True, True, True),
        ("Preempted", False, True, True),  # admitted, still starting: the quota went all the same
        ("NodeFailures", True, True, True),
        ("ClusterQueueStopped", True, True, True),
        ("PodsReadyTimeout", True, True, True),  # it had run: recoveryTimeout, a lost gang
        ("PodsReadyTimeout", False, True, False),  # never ready: Kueue requeues it with back-off
        ("Deactivated", True, False, False),  # replacing it would undo the deactivation
    ],
)
def test_which_kueue_evictions_restart_the_gang(reason: str, ran: bool, active: bool, restarts: bool) -> None:
    wl = workload("u", condition("Evicted", reason, "True", "why"), active=active)
    decision = kueue.eviction(wl, "base-pretrain-a1", ran=ran)
    assert (decision is not None) == restarts
    if decision is not None:
        assert decision.action == "restart" and not decision.counted and decision.reason == reason
        assert "base-pretrain-a1" in decision.message and "why" in decision.message


def test_an_evicted_condition_that_is_false_or_missing_is_no_eviction() -> None:
    assert kueue.eviction(workload("u", condition("Evicted", "Preempted", "False", "earlier")), "x", ran=True) is None
    assert kueue.eviction(workload("u", condition("QuotaReserved", "QuotaReserved")), "x", ran=True) is None
    assert kueue.eviction(None, "x", ran=True) is None


def test_a_reason_that_is_no_condition_reason_is_replaced() -> None:
    decision = kueue.eviction(workload("u", condition("Evicted", "odd reason!", "True")), "x", ran=True)
    assert decision is not None and decision.reason == "EvictedByKueue" and "(odd reason!)" in decision.message


def test_the_workload_is_the_one_the_job_owns() -> None:
    mine, other = workload("uid-a"), workload("uid-b")
    deleting = workload("uid-a")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert kueue.workload_of([other, deleting, mine], "uid-a") is mine
    assert kueue.workload_of([other], "uid-a") is None


# -- which Job a pass reads the Workload for ----------------------------------------------------------


def test_the_workload_is_read_only_for_the_current_suspended_queued_job() -> None:
    current = {KUEUE_QUEUE_LABEL: "team-a", LABEL_ATTEMPT: "2"}
    status = {"attempt": 2}
    held = batch_job("base-pretrain-a2", labels=current, suspend=True)
    assert queued_job(status, [held]) is held
    assert queued_job(status, [batch_job("base-pretrain-a2", labels=current)]) is None  # admitted
    assert queued_job(status, [batch_job("base-pretrain-a2", labels={LABEL_ATTEMPT: "2"}, suspend=True)]) is None
    assert queued_job({"attempt": 3}, [held]) is None  # an earlier attempt's Job
    assert queued_job({}, []) is None


# -- decide(): WaitingForAdmission in Kueue's words ----------------------------------------------------


def test_waiting_for_admission_carries_kueues_message() -> None:
    body = queued()
    first = decide_on(body)
    child = batch_of(first)
    wl = workload("uid-base-pretrain-a1", condition("QuotaReserved", "Pending", "False", NO_QUOTA))
    plan = decide_on(with_status(body, first.status), wl, children=[child])
    running = cond(plan, "Running")
    assert running["reason"] == "WaitingForAdmission"
    assert running["message"] == f"Job base-pretrain-a1 is queued in team-a: {NO_QUOTA}"
    assert plan.status["attempt"] == 1 and not plan.apply and not plan.delete


# -- decide(): Kueue preempts a running gang ------------------------------------------------------------


def test_a_running_gang_preempted_by_kueue_restarts_as_a_new_queued_attempt_without_using_retries() -> None:
    body, child = running_queued(queued(backoffLimit=1))
    gone = gang(child, deleting=True)  # the Job controller deletes the suspended Job's pods
    wl = workload("uid-base-pretrain-a1", condition("Evicted", "Preempted", "True", PREEMPTED))
    plan = decide_on(body, wl, children=[suspended(child)], pods=gone, now=T0)

    assert plan.status["attempt"] == 2 and plan.status["state"] == "Restarting"
    assert plan.status["evictions"] == 1 and plan.status["restarts"] == 0
    restarting = cond(plan, "Restarting")
    assert restarting["reason"] == "Preempted"
    assert restarting["message"].startswith("attempt 1: Job base-pretrain-a1 was preempted by Kueue: Preempted to")
    assert ("Warning", "Preempted") in [(t, r) for t, r, _ in plan.events]
    assert plan.restart_reason == "Preempted"
    assert ("batch/v1", "Job", "base-pretrain-a1") in plan.delete
    fresh = batch_of(plan)
    assert fresh["metadata"]["name"] == "base-pretrain-a2" and fresh["spec"]["suspend"] is True
    assert fresh["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"

    # The new attempt waits for Kueue in Kueue's words, still Restarting, nothing counted.
    new_wl = workload("uid-base-pretrain-a2", condition("QuotaReserved", "Pending", "False", NO_QUOTA))
    waiting = decide_on(with_status(body, plan.status), new_wl, children=[fresh])
    assert waiting.status["state"] == "Restarting" and waiting.status["evictions"] == 1
    assert cond(waiting, "Running")["reason"] == "WaitingForAdmission"
    assert NO_QUOTA in cond(waiting, "Running")["message"]

    # Admitted again: it runs, and the restart is over.
    up = admitted(fresh)
    back = decide_on(with_status(body, waiting.status), children=[up], pods=gang(up))
    assert back.status["state"] == "Running" and cond(back, "Restarting")["reason"] == "Recovered"
    assert (back.status["restarts"], back.status["evictions"]) == (0, 1)


def test_a_gang_that_never_got_ready_stays_on_its_attempt_for_kueue_to_requeue() -> None:
    body = queued()
    first = decide_on(body)
    child = admitted(batch_of(first))
    starting = decide_on(with_status(body, first.status), children=[child], pods=gang(child, "Pending"))
    body = with_status(body, starting.status)
    wl = workload(
        "uid-base-pretrain-a1",
        condition("Evicted", "PodsReadyTimeout", "True", TIMED_OUT),
        condition("QuotaReserved", "Pending", "False", TIMED_OUT),
    )
    plan = decide_on(body, wl, children=[suspended(child)])
    assert plan.status["attempt"] == 1 and (plan.status["restarts"], plan.status["evictions"]) == (0, 0)
    assert not plan.apply and not plan.delete
    running = cond(plan, "Running")
    assert running["reason"] == "WaitingForAdmission" and f"(PodsReadyTimeout): {TIMED_OUT}" in running["message"]


def test_without_the_workload_a_suspended_running_gang_is_still_restarted_uncounted() -> None:
    """No Kueue RBAC: the pods vanish from a gang that ran, which reads as a lost pod (as before)."""
    body, child = running_queued(queued())
    plan = decide_on(body, None, children=[suspended(child)], pods=[])
    assert plan.status["attempt"] == 2 and (plan.status["restarts"], plan.status["evictions"]) == (0, 1)
    assert cond(plan, "Restarting")["reason"] == "PodLost"


# -- render: Kueue's labels reach the Job ---------------------------------------------------------------


def test_kueue_priority_class_label_reaches_the_job_and_its_pods() -> None:
    labels = {KUEUE_QUEUE_LABEL: "team-a", "kueue.x-k8s.io/priority-class": "high"}
    objs = render_attempt(job(queued()), Owner("uid-base", labels=labels), 1, {}, SETTINGS)
    batch = next(o for o in objs if o["kind"] == "Job")
    assert labels.items() <= batch["metadata"]["labels"].items()
    assert labels.items() <= batch["spec"]["template"]["metadata"]["labels"].items()
    assert batch["spec"]["suspend"] is True


# -- reconcile: one read, and only where it helps -------------------------------------------------------


class Counting(Harness):
    """A Harness whose cluster counts (and can refuse) Workload lists."""

    def __init__(self, body: Obj, refuse: int | None = None) -> None:
        super().__init__(body)
        self.reads = 0
        listing = self.cluster.list_children

        def list_children(
            kind: str, namespace: str, selector: dict[str, str], since: str | None = None
        ) -> tuple[list[Obj], str | None]:
            if kind == "Workload":
                self.reads += 1
                if refuse is not None:
                    raise ApiError(refuse, "GET", "/apis/kueue.x-k8s.io/v1beta2/namespaces/default/workloads", "{}")
            return listing(kind, namespace, selector, since)

        self.cluster.list_children = list_children  # type: ignore[method-assign]

    def job_uid(self, attempt: int) -> str:
        found = self.cluster.job_of(attempt)
        assert found is not None
        found["metadata"]["uid"] = f"uid-base-pretrain-a{attempt}"
        return str(found["metadata"]["uid"])


def test_reconcile_reads_the_workload_only_while_the_current_job_is_held() -> None:
    h = Counting(queued())
    h.run()  # creates attempt 1, suspended: nothing to read yet (no Job existed when the pass began)
    assert h.reads == 0
    uid = h.job_uid(1)
    h.cluster.put(workload(uid, condition("QuotaReserved", "Pending", "False", NO_QUOTA)))
    h.run()
    assert h.reads == 1 and NO_QUOTA in h.condition("Running")["message"]
    job_a1 = h.cluster.job_of(1)
    assert job_a1 is not None
    job_a1["spec"]["suspend"] = False  # admitted
    h.cluster.make_pods(1)
    h.run()
    h.run()
    assert h.reads == 1 and h.status()["state"] == "Running"


def test_reconcile_never_reads_workloads_for_a_job_without_a_queue() -> None:
    h = Counting(job_body(resources={"nodes": 2, "gpusPerNode": 8}))
    h.run()
    h.run()
    assert h.reads == 0


@pytest.mark.parametrize("refused", [403, 404])
def test_without_kueue_or_its_rbac_the_message_stays_generic_and_it_is_logged_once(
    refused: int, caplog: pytest.LogCaptureFixture
) -> None:
    h = Counting(queued(), refuse=refused)
    h.run()
    h.job_uid(1)
    with caplog.at_level(logging.WARNING, logger="forgeline.operator.reconcile"):
        h.run()
        h.run()
    assert h.reads == 2
    assert h.condition("Running")["reason"] == "WaitingForAdmission"
    assert h.condition("Running")["message"] == "Job base-pretrain-a1 is queued in team-a"
    assert len([r for r in caplog.records if "Kueue Workloads not read" in r.getMessage()]) == 1
