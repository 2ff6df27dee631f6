"""Checks a CRD schema cannot express, shared by `forgeline validate` and the operator's preflight.

Most rules live on the models as CEL (fields.py), so the API server enforces them. Two kinds of
rule cannot: CEL in a CRD sees only `metadata.name` of the object's metadata, so label and
annotation keys are checked here; and a rule that spans jobs (an RLHF policy's context length is
its upstream PretrainJob's) needs the other job, which the API server never reads. The operator
runs these before the first attempt (operator/policies/preflight.py: a Failed condition naming
the field, no pods); `forgeline validate` runs them over the jobs of the files it is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from forgeline.api.chain import JobKey
from forgeline.api.kinds import GROUP, KINDS, Job, PretrainJob, RLHFJob

# Labels Kubernetes puts on a Job's pods itself: a user value there makes the API server refuse
# the Job (its selector no longer matches) or lets the pods be counted as another Job's.
_KUBERNETES_LABELS = ("job-name", "controller-uid")
# Domains whose keys Kubernetes owns (every subdomain too: Kubernetes reserves them all), and the
# ones forgeline writes (only these: other subdomains of forgeline.io are free for tools and tests).
_KUBERNETES_DOMAINS = ("kubernetes.io", "k8s.io")
_FORGELINE_DOMAINS = ("forgeline.io", "operator.forgeline.io")
# Owned by the user or their tools, though under a managed domain: app.kubernetes.io/ are the
# recommended application labels; kubectl writes its last-applied annotation on every object.
_USER_PREFIXES = ("app.kubernetes.io/",)
_TOOL_ANNOTATIONS = ("kubectl.kubernetes.io/", "operator.forgeline.io/")
MAX_CHAIN = 16  # upstream hops followed to find a model's architecture


@dataclass(frozen=True)
class SemanticProblem:
    field: str  # full path, e.g. spec.rlhf.maxCompletionLength or metadata.labels[job-name]
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def managed_key(key: str) -> bool:
    """A label or annotation key Kubernetes or forgeline sets on the objects it manages."""
    if key in _KUBERNETES_LABELS:
        return True
    if "/" not in key or key.startswith(_USER_PREFIXES):
        return False
    domain = key.split("/", 1)[0]
    return domain in _FORGELINE_DOMAINS or any(domain == d or domain.endswith("." + d) for d in _KUBERNETES_DOMAINS)


def _managed_cel(var: str) -> str:
    """managed_key() as a CEL expression over the string `var` (the admission policy's twin)."""
    domains = "|".join(re.escape(d) for d in _KUBERNETES_DOMAINS)
    ours = "|".join(re.escape(d) for d in _FORGELINE_DOMAINS)
    user = " && ".join(f"!{var}.startsWith('{u}')" for u in _USER_PREFIXES)
    return (
        f"({var} in {list(_KUBERNETES_LABELS)} || {var}.matches(r'^({ours})/') || "
        f"({var}.matches(r'^([^/]+\\.)?({domains})/') && {user}))"
    )


def _tool_cel(var: str) -> str:
    return " || ".join(f"{var}.startsWith('{t}')" for t in _TOOL_ANNOTATIONS)


def admission_policy(name: str) -> dict[str, Any]:
    """A ValidatingAdmissionPolicy refusing metadata_problems() at admission: CEL in a CRD cannot
    see labels, an admission policy can. An update that leaves the labels and annotations as they
    were passes, so an object stored before the policy can still be finalized and deleted.
    The chart ships it (templates/admission-policy.yaml) with a binding for every namespace."""
    labels, annotations = "object.metadata.?labels.orValue({})", "object.metadata.?annotations.orValue({})"
    bad_label = _managed_cel("k")
    bad_annotation = f"({_managed_cel('k')} && !({_tool_cel('k')}))"
    unchanged = (
        "request.operation == 'UPDATE' && oldObject.metadata.?labels.orValue({}) == " + labels + " && "
        "oldObject.metadata.?annotations.orValue({}) == " + annotations
    )
    hint = " (Kubernetes or forgeline manage these keys; use a key of your own domain, e.g. example.com/team)"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": sorted(cls.plural for cls in KINDS.values()),
                    }
                ]
            },
            "validations": [
                {
                    "expression": f"({unchanged}) || {labels}.all(k, !{bad_label})",
                    "messageExpression": f"'metadata.labels: ' + {labels}.filter(k, {bad_label}).join(', ') + '{hint}'",
                    "reason": "Invalid",
                },
                {
                    "expression": f"({unchanged}) || {annotations}.all(k, !{bad_annotation})",
                    "messageExpression": f"'metadata.annotations: ' + {annotations}.filter(k, {bad_annotation})"
                    f".join(', ') + '{hint}'",
                    "reason": "Invalid",
                },
            ],
        },
    }


def metadata_problems(labels: Mapping[str, str], annotations: Mapping[str, str]) -> list[SemanticProblem]:
    """User labels and annotations that would collide with the keys of Kubernetes or forgeline."""
    problems = [
        SemanticProblem(
            f"metadata.labels[{key}]",
            "is a label Kubernetes or forgeline sets on the pods it manages; remove it (pick a key of your own "
            "domain, e.g. example.com/team)",
        )
        for key in sorted(labels)
        if managed_key(key)
    ]
    problems += [
        SemanticProblem(
            f"metadata.annotations[{key}]",
            "is an annotation Kubernetes or forgeline owns; remove it (pick a key of your own domain)",
        )
        for key in sorted(annotations)
        if managed_key(key) and not key.startswith(_TOOL_ANNOTATIONS)
    ]
    return problems


Lookup = Callable[[JobKey], Job | None]


def context_length(job: Job, lookup: Lookup) -> int | None:
    """Tokens of context of the language model `job` produces, when its architecture is known
    (a PretrainJob from config, directly or upstream through fromJob links `lookup` can find)."""
    for _ in range(MAX_CHAIN):
        if isinstance(job, PretrainJob) and job.spec.model.config is not None:
            return job.spec.model.config.context_length
        source = job.spec.rlhf.policy if isinstance(job, RLHFJob) else getattr(job.spec, "model", None)
        ref = getattr(source, "from_job", None)
        if ref is None:
            return None
        upstream = lookup(JobKey(ref.kind, ref.name))
        if upstream is None:
            return None
        job = upstream
    return None


def semantic_problems(job: Job, lookup: Lookup = lambda _: None) -> list[SemanticProblem]:
    """Problems of `job` that depend on its upstream jobs (found through `lookup`, same namespace)."""
    problems: list[SemanticProblem] = []
    if isinstance(job, RLHFJob) and (ref := job.spec.rlhf.policy.from_job) is not None:
        upstream = lookup(JobKey(ref.kind, ref.name))
        limit = context_length(upstream, lookup) if upstream is not None else None
        wanted = job.spec.rlhf.max_completion_length
        if limit is not None and wanted >= limit:
            problems.append(
                SemanticProblem(
                    "spec.rlhf.maxCompletionLength",
                    f"is {wanted} but the policy's context is {limit} tokens (its contextLength), and the prompt "
                    "needs room too; lower it below the context length",
                )
            )
    return problems
