"""Cross-job references on the real control plane (kwok plays the pods): a failed upstream holds
its downstream, deleting and re-creating it starts the downstream, and a cycle is reported on
every member. Driven by watch events: the operator's resync here is 5 s, so a hand-off that waited
for it would show in the timings asserted."""

from __future__ import annotations

import time
from typing import Any

import pytest
from testbed.kube import EXIT_CODE_ANNOTATION, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def lora(name: str, upstream_kind: str, upstream: str) -> dict[str, Any]:
    return {
        "apiVersion": "forgeline.io/v1alpha1",
        "kind": "LoRAJob",
        "metadata": {"name": name, "labels": {"testbed.forgeline.io/outcome": "hang"}},
        "spec": {
            "model": {"fromJob": {"kind": upstream_kind, "name": upstream}},
            "data": {"synthetic": {"examples": 100}},
            "resources": {"nodes": 1, "gpusPerNode": 1},
        },
    }


def test_a_failed_upstream_holds_its_downstream_until_recreated_and_succeeded(
    jobs: Any, manifest: Any, cond: Any
) -> None:
    failing = manifest("base", outcome="fail", nodes=1, run_policy={"backoffLimit": 0})
    failing["metadata"]["annotations"] = {EXIT_CODE_ANNOTATION: "2"}
    jobs.create(failing)
    jobs.create(lora("tuned", "PretrainJob", "base"))
    jobs.wait_state("base", "Failed")
    held = jobs.wait(
        "tuned",
        lambda s: cond(s, "InputsReady").get("reason") == "UpstreamFailed",
        what="UpstreamFailed",
        kind="LoRAJob",
    )
    assert "PretrainJob/base failed" in cond(held, "InputsReady")["message"], held
    assert not jobs.batch_jobs("tuned"), "nothing starts below a failed upstream"

    jobs.delete("base")
    jobs.wait(
        "tuned",
        lambda s: cond(s, "InputsReady").get("reason") == "UpstreamMissing",
        timeout=10,
        what="UpstreamMissing",
        kind="LoRAJob",
    )
    wait_for(lambda: jobs.get("base") is None, timeout=30, what="base deleted")
    jobs.create(manifest("base", outcome=None, nodes=1))  # kwok completes it at once
    done = jobs.wait_state("base", "Succeeded")
    seen = time.monotonic()
    status = jobs.wait("tuned", lambda s: s.get("attempt") == 1, timeout=10, what="attempt 1", kind="LoRAJob")
    assert time.monotonic() - seen < 3, "started by the upstream's watch event, not by a resync"
    assert status["inputs"][0]["uri"] == done["output"]["uri"]
    assert cond(status, "InputsReady")["status"] == "True"


def test_a_cycle_is_reported_on_every_member(jobs: Any, cond: Any) -> None:
    for name, upstream in (("a", "b"), ("b", "c"), ("c", "a")):
        jobs.create(lora(name, "LoRAJob", upstream))
    for name in "abc":
        status = jobs.wait(
            name,
            lambda s: cond(s, "InputsReady").get("reason") == "ChainCycle",
            what="ChainCycle",
            kind="LoRAJob",
        )
        message = cond(status, "InputsReady")["message"]
        assert "LoRAJob/a -> " in message or "-> LoRAJob/a" in message, message
        assert status["state"] == "Waiting" and not jobs.batch_jobs(name)
