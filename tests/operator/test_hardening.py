"""A shared cluster can trust the operator: hardened pods, hostile objects, tenancy, on the real API server.

Pod Security admission is built into kube-apiserver (on by default; the testbed does not disable
it), so a namespace labelled `pod-security.kubernetes.io/enforce=restricted` refuses any pod that
is not non-root, seccomp RuntimeDefault, no privilege escalation, all capabilities dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from testbed.kube import wait_for

from forgeline.api.semantics import admission_policy

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def test_pods_start_in_a_namespace_that_enforces_the_restricted_pod_security_standard(jobs: Any, manifest: Any) -> None:
    jobs.core.patch_namespace(jobs.ns, {"metadata": {"labels": RESTRICTED}})
    jobs.create(manifest("hardened", nodes=2))
    status = jobs.wait_state("hardened", "Running")
    assert status["replicas"]["running"] == 2
    for pod in jobs.pods("hardened"):
        assert pod.spec.security_context.run_as_non_root is True
        assert pod.spec.automount_service_account_token is False
        container = pod.spec.containers[0].security_context
        assert container.read_only_root_filesystem is True and container.allow_privilege_escalation is False


def test_restricted_namespace_refuses_a_pod_that_breaks_the_standard(jobs: Any) -> None:
    """The control for the test above: the admission plugin is really on in this API server."""
    jobs.core.patch_namespace(jobs.ns, {"metadata": {"labels": RESTRICTED}})
    pod = {"metadata": {"name": "rooty"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    with pytest.raises(client.ApiException) as refused:
        jobs.core.create_namespaced_pod(jobs.ns, pod)
    assert refused.value.status == 403 and "restricted" in refused.value.body


def _post_raw(cluster: Any, ns: str, body: dict[str, Any], nested: str, where: Path) -> Any:
    """POST the body with `nested` in place of its one null: bytes no Python client would send."""
    where.write_text(json.dumps(body).replace("null", nested))
    path = f"/apis/forgeline.io/v1alpha1/namespaces/{ns}/pretrainjobs"
    return cluster.kubectl("create", "--raw", path, "-f", str(where), check=False)


def test_deeply_nested_lists_never_reach_the_operator_and_a_normal_job_beside_them_runs(
    cluster: Any, jobs: Any, manifest: Any, tmp_path: Path
) -> None:
    deep = "[" * 3000 + "]" * 3000
    unknown = manifest("pruned")
    unknown["spec"]["resources"]["affinity"] = {"nodeAffinity": {"x": None}}
    typed = manifest("refused")
    expression = {"key": "pool", "operator": "In", "values": None}
    required = {"nodeSelectorTerms": [{"matchExpressions": [expression]}]}
    node = {"requiredDuringSchedulingIgnoredDuringExecution": required}
    typed["spec"]["resources"]["affinity"] = {"nodeAffinity": node}
    # An unknown field is pruned before the object is stored; a typed one is refused.
    assert _post_raw(cluster, jobs.ns, unknown, deep, tmp_path / "unknown.json").returncode == 0
    assert jobs.get("pruned")["spec"]["resources"]["affinity"] == {"nodeAffinity": {}}
    refused = _post_raw(cluster, jobs.ns, typed, deep, tmp_path / "typed.json")
    assert refused.returncode != 0 and "values[0]" in refused.stderr and jobs.get("refused") is None
    jobs.create(manifest("normal"))
    assert jobs.wait_state("normal", "Running")["replicas"]["running"] == 1
    assert jobs.wait_state("pruned", "Running")["replicas"]["running"] == 1


def test_reserved_label_fails_the_job_before_any_pod(jobs: Any, manifest: Any, cond: Any) -> None:
    body = manifest("spoof")
    body["metadata"]["labels"]["job-name"] = "someone-else"
    jobs.create(body)
    status = jobs.wait_state("spoof", "Failed")
    failed = cond(status, "Failed")
    assert failed["reason"] == "InvalidSpec" and "metadata.labels[job-name]" in failed["message"]
    assert not jobs.batch_jobs("spoof") and not jobs.pods("spoof")


def test_output_in_another_namespaces_prefix_fails_before_any_pod(
    jobs: Any, manifest: Any, cond: Any, operator: Any
) -> None:
    body = manifest("trespass")
    body["spec"]["storage"] = {"outputUri": f"{operator.store}/other-team/pretrainjob/base"}
    jobs.create(body)
    failed = cond(jobs.wait_state("trespass", "Failed"), "Failed")
    assert "spec.storage.outputUri" in failed["message"] and f"{operator.store}/{jobs.ns}/" in failed["message"]
    assert not jobs.batch_jobs("trespass")


def test_what_the_schema_accepts_renders_into_a_job_the_api_server_accepts(jobs: Any, manifest: Any) -> None:
    """Every typed pass-through field at once: affinity, env valueFrom, tolerations, nodeSelector."""
    jobs.core.create_namespaced_secret(jobs.ns, {"metadata": {"name": "hf"}, "stringData": {"token": "t"}})
    term = {"matchExpressions": [{"key": "type", "operator": "In", "values": ["kwok"]}]}
    body = manifest(
        "typed",
        affinity={
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}},
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 10,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "other"}},
                        },
                    }
                ]
            },
        },
        env=[
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        ],
        memory="1Gi",
        tolerations=[{"key": "example.com/spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}],
    )
    jobs.create(body)
    assert jobs.wait_state("typed", "Running")["replicas"]["running"] == 1
    (pod,) = jobs.pods("typed")
    env = {e.name: e.value_from for e in pod.spec.containers[0].env if e.value_from is not None}
    assert env["HF_TOKEN"].secret_key_ref.name == "hf"
    assert pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution is not None
    assert pod.spec.affinity.pod_anti_affinity.preferred_during_scheduling_ignored_during_execution[0].weight == 10


# The keys of tests/unit/test_preflight.py's managed-key table, as labels: refused (True) or not.
LABEL_KEYS = {
    "job-name": True,
    "controller-uid": True,
    "batch.kubernetes.io/job-name": True,
    "node.k8s.io/x": True,
    "forgeline.io/job": True,
    "app.kubernetes.io/name": False,
    "kueue.x-k8s.io/queue-name": False,
    "example.com/team": False,
}


def test_the_admission_policy_refuses_managed_labels_at_admission(cluster: Any, jobs: Any, manifest: Any) -> None:
    """The chart's ValidatingAdmissionPolicy (api/semantics.py), bound here to this namespace only."""
    name = f"forgeline-metadata-{jobs.ns}"
    policies = client.AdmissionregistrationV1Api(cluster.client)
    policies.create_validating_admission_policy(admission_policy(name))
    jobs.core.patch_namespace(jobs.ns, {"metadata": {"labels": {"forgeline-test/policy": jobs.ns}}})
    binding = {
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"forgeline-test/policy": jobs.ns}}},
        },
    }
    policies.create_validating_admission_policy_binding(binding)
    try:

        def refusal(key: str) -> str | None:
            body = manifest("labelled")
            body["metadata"]["labels"][key] = "x"
            try:
                jobs.custom.create_namespaced_custom_object(
                    "forgeline.io", "v1alpha1", jobs.ns, "pretrainjobs", body, dry_run="All"
                )
            except client.ApiException as exc:
                return str(exc.body)
            return None

        first = wait_for(lambda: refusal("job-name"), timeout=30, what="the admission policy to take effect")
        assert "metadata.labels: job-name" in first and "example.com/team" in first
        assert {key: refusal(key) is not None for key in LABEL_KEYS} == LABEL_KEYS
    finally:
        policies.delete_validating_admission_policy_binding(name)
        policies.delete_validating_admission_policy(name)
