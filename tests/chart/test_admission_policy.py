"""The chart's ValidatingAdmissionPolicy is the API's rule, unchanged (api/semantics.py); the
policy itself is tried on the real API server in tests/operator/test_hardening.py."""

from __future__ import annotations

from typing import Any

from chart.helmkit import render

from forgeline.api.semantics import admission_policy


def rendered(kind: str) -> dict[str, Any]:
    return next(o for o in render() if o["kind"] == kind)


def test_the_chart_ships_the_apis_admission_policy_unchanged() -> None:
    policy = rendered("ValidatingAdmissionPolicy")
    assert policy["spec"] == admission_policy(policy["metadata"]["name"])["spec"]


def test_the_binding_denies_in_every_namespace() -> None:
    binding = rendered("ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == rendered("ValidatingAdmissionPolicy")["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"] and "matchResources" not in binding["spec"]
