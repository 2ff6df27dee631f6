"""One job the operator cannot read or render never stops it: that job is Failed with the cause,
and every other job is reconciled as before."""

from __future__ import annotations

from testbed.builders import job_body, pretrain
from testbed.fakecluster import Harness


def test_a_job_whose_pass_raises_is_failed_with_the_cause_and_the_others_carry_on() -> None:
    bad = job_body(name="bad", status={"state": "Running", "attempt": 1, "startTime": "yesterday"})
    h = Harness(bad, pretrain("good"))
    assert h.run("bad") is None
    failed = h.condition("Failed", "bad")
    assert h.status("bad")["state"] == "Failed" and failed["reason"] == "RenderFailed"
    assert "yesterday" in failed["message"]
    h.run("bad")
    writes = h.cluster.status_writes
    h.run("bad")
    assert h.cluster.status_writes == writes, "a failed job is not rewritten every pass"
    h.run("good")
    assert h.status("good")["state"] == "Created" and h.cluster.job_of(1, "good-pretrain") is not None


def test_an_object_the_schema_would_refuse_is_failed_naming_the_field() -> None:
    """What the API server refuses since affinity is typed (tests/operator/test_hardening.py), had it
    been stored before: lists nested 200 deep where an object belongs."""
    nested: list[object] = []
    for _ in range(200):
        nested = [nested]
    body = pretrain("deep")
    body["spec"]["resources"]["affinity"] = {"nodeAffinity": nested}
    h = Harness(body)
    assert h.run("deep") is None
    failed = h.condition("Failed", "deep")
    assert h.status("deep")["state"] == "Failed" and failed["reason"] == "InvalidSpec"
    assert "spec.resources.affinity" in failed["message"]
    assert h.cluster.job_of(1, "deep-pretrain") is None
