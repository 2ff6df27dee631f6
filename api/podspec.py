"""The core/v1 pod types a job passes to its pods (affinity, env valueFrom, label keys), typed.

These fields used to be `x-kubernetes-preserve-unknown-fields` maps passed through unchanged. The
API server stored anything there, a list nested 3,000 deep included, and every reader of the
object (the operator's watch, `forgeline status`) then had to decode it. Typed models make the
CRD schema structural: the API server itself refuses unknown fields, deep nesting (the schema is
as deep as the Kubernetes type, no deeper) and oversized lists, and a stored object renders into
a pod the API server accepts. The bounds are Kubernetes' own where it has them (label keys and
values, weights), otherwise generous for any real pod and small enough for CEL's cost estimate.

Tenancy: a secretKeyRef or configMapKeyRef has no namespace (core/v1 has none either): a pod
reads its own namespace's objects only.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field

from forgeline.api.fields import ApiModel, Rule, exactly_one, snake_case

# A qualified name, as label keys, annotation keys, node-selector keys and taint keys must be:
# an optional DNS-subdomain prefix and '/', then a name of at most 63 characters.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
# A label value: empty, or at most 63 alphanumerics with '-', '_', '.' inside.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
# A ConfigMap or Secret name (DNS subdomain) without a namespace: references stay in the job's namespace.
OBJECT_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A ConfigMap or Secret data key.
DATA_KEY = r"^[-._a-zA-Z0-9]+$"

QUALIFIED_NAME_MAX = 317  # a 253-character prefix, '/', a 63-character name
LabelKey = Annotated[str, Field(min_length=1, max_length=QUALIFIED_NAME_MAX, pattern=QUALIFIED_NAME)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=OBJECT_NAME)]
DataKey = Annotated[str, Field(min_length=1, max_length=253, pattern=DATA_KEY)]
_Values = list[LabelValue]
_MAX_VALUES = 64
_MAX_TERMS = 16
_MAX_EXPRESSIONS = 16


def qualified_keys(field: str) -> Rule:
    """The keys of a map field are qualified names (a CRD schema cannot constrain map keys: CEL does)."""
    attr = snake_case(field)
    return Rule(
        cel=f"!has(self.{field}) || "
        f"self.{field}.all(k, size(k) <= {QUALIFIED_NAME_MAX} && k.matches(r'{QUALIFIED_NAME}'))",
        message=f"{field} keys must be qualified names (an optional DNS prefix and '/', then at most 63 letters, "
        "digits, '-', '_' or '.', starting and ending with a letter or digit)",
        check=lambda m: all(
            len(k) <= QUALIFIED_NAME_MAX and re.fullmatch(QUALIFIED_NAME, k) for k in getattr(m, attr) or {}
        ),
        field=field,
    )


def _values_match_operator(set_ops: tuple[str, ...], exists_ops: tuple[str, ...]) -> Rule:
    """In/NotIn need values; Exists/DoesNotExist take none (as the API server checks on a Pod)."""
    return Rule(
        cel=f"self.operator in {list(exists_ops)} ? (!has(self.values) || size(self.values) == 0) : "
        f"(!(self.operator in {list(set_ops)}) || (has(self.values) && size(self.values) > 0))",
        message=f"operators {', '.join(set_ops)} need values; {', '.join(exists_ops)} take none",
        check=lambda m: (not m.values) if m.operator in exists_ops else (m.operator not in set_ops or bool(m.values)),
        field="values",
    )


class NodeSelectorRequirement(ApiModel):
    """core/v1 NodeSelectorRequirement: a node label (or field) compared with values."""

    key: LabelKey = Field(description="node label key (or field name for matchFields), e.g. kubernetes.io/hostname")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="In, NotIn, Exists, DoesNotExist, Gt or Lt (Gt/Lt: one integer value)"
    )
    values: _Values = Field(
        default_factory=list,
        max_length=_MAX_VALUES,
        description="values to compare with; In/NotIn: at least one; Exists/DoesNotExist: none; Gt/Lt: one integer",
    )

    rules = (
        _values_match_operator(("In", "NotIn"), ("Exists", "DoesNotExist")),
        Rule(
            cel="!(self.operator in ['Gt', 'Lt']) || (has(self.values) && size(self.values) == 1 && "
            "self.values[0].matches('^[0-9]+$'))",
            message="operators Gt and Lt take exactly one value, an integer",
            check=lambda m: m.operator not in ("Gt", "Lt") or (len(m.values) == 1 and m.values[0].isdigit()),
            field="values",
        ),
    )


class NodeSelectorTerm(ApiModel):
    """core/v1 NodeSelectorTerm: requirements that must all hold (ANDed)."""

    match_expressions: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=_MAX_EXPRESSIONS, description="requirements on node labels; default none"
    )
    match_fields: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=_MAX_EXPRESSIONS, description="requirements on node fields; default none"
    )


class NodeSelector(ApiModel):
    """core/v1 NodeSelector: terms of which at least one must match (ORed)."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        min_length=1, max_length=_MAX_TERMS, description="the terms; a node matching any one of them qualifies"
    )


class PreferredSchedulingTerm(ApiModel):
    """core/v1 PreferredSchedulingTerm: a weighted node preference."""

    weight: int = Field(ge=1, le=100, description="weight of this preference, 1 to 100")
    preference: NodeSelectorTerm = Field(description="the node selector term preferred")


class NodeAffinity(ApiModel):
    """core/v1 NodeAffinity: which nodes the pods must or should run on."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="nodes the pods must run on; default: any node"
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=_MAX_TERMS, description="weighted node preferences; default none"
    )


class LabelSelectorRequirement(ApiModel):
    """metav1.LabelSelectorRequirement: a label compared with values."""

    key: LabelKey = Field(description="label key")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="In, NotIn, Exists or DoesNotExist")
    values: _Values = Field(
        default_factory=list,
        max_length=_MAX_VALUES,
        description="values to compare with; In/NotIn: at least one; Exists/DoesNotExist: none",
    )

    rules = (_values_match_operator(("In", "NotIn"), ("Exists", "DoesNotExist")),)


class LabelSelector(ApiModel):
    """metav1.LabelSelector: labels that must all match (matchLabels and matchExpressions ANDed)."""

    match_labels: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=32,
        description="labels (qualified-name keys) that must equal these values; default none",
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=_MAX_EXPRESSIONS, description="label requirements; default none"
    )

    rules = (qualified_keys("matchLabels"),)


class PodAffinityTerm(ApiModel):
    """core/v1 PodAffinityTerm: pods (by label) whose topology domain the pods join or avoid."""

    label_selector: LabelSelector | None = Field(default=None, description="the pods this term is about")
    namespace_selector: LabelSelector | None = Field(
        default=None, description="namespaces those pods are in, by label; default: this job's namespace"
    )
    namespaces: list[ObjectName] = Field(
        default_factory=list, max_length=32, description="namespaces those pods are in, by name; default: this one"
    )
    topology_key: LabelKey = Field(description="node label of the domain, e.g. topology.kubernetes.io/zone")
    match_label_keys: list[LabelKey] = Field(
        default_factory=list, max_length=16, description="pod label keys whose values narrow labelSelector"
    )
    mismatch_label_keys: list[LabelKey] = Field(
        default_factory=list, max_length=16, description="pod label keys whose values exclude pods"
    )


class WeightedPodAffinityTerm(ApiModel):
    """core/v1 WeightedPodAffinityTerm: a weighted pod (anti-)affinity preference."""

    weight: int = Field(ge=1, le=100, description="weight of this preference, 1 to 100")
    pod_affinity_term: PodAffinityTerm = Field(description="the term preferred")


class PodAffinity(ApiModel):
    """core/v1 PodAffinity (also PodAntiAffinity's shape): pods to be placed near (or away from)."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=_MAX_TERMS, description="terms that must hold; default none"
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=_MAX_TERMS, description="weighted preferences; default none"
    )


class PodAntiAffinity(PodAffinity):
    """core/v1 PodAntiAffinity: pods to be placed away from."""


class Affinity(ApiModel):
    """core/v1 Affinity for the training pods."""

    node_affinity: NodeAffinity | None = Field(default=None, description="node affinity; default none")
    pod_affinity: PodAffinity | None = Field(default=None, description="pod affinity; default none")
    pod_anti_affinity: PodAntiAffinity | None = Field(default=None, description="pod anti-affinity; default none")


class SecretKeySelector(ApiModel):
    """core/v1 SecretKeySelector: one key of a Secret in this job's namespace (there is no namespace field)."""

    name: ObjectName = Field(description="name of the Secret, in this job's namespace")
    key: DataKey = Field(description="key in the Secret")
    optional: bool | None = Field(default=None, description="true: the variable is unset if missing; default false")


class ConfigMapKeySelector(ApiModel):
    """core/v1 ConfigMapKeySelector: one key of a ConfigMap in this job's namespace."""

    name: ObjectName = Field(description="name of the ConfigMap, in this job's namespace")
    key: DataKey = Field(description="key in the ConfigMap")
    optional: bool | None = Field(default=None, description="true: the variable is unset if missing; default false")


class ObjectFieldSelector(ApiModel):
    """core/v1 ObjectFieldSelector: a field of the pod (downward API)."""

    api_version: Literal["v1"] | None = Field(default=None, description="always v1 (the default)")
    field_path: Literal[
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.hostIP",
        "status.hostIPs",
        "status.podIP",
        "status.podIPs",
    ] = Field(description="pod field: metadata.name, metadata.namespace, metadata.uid, spec.nodeName, status.podIP")


class ResourceFieldSelector(ApiModel):
    """core/v1 ResourceFieldSelector: a resource request or limit of the trainer container."""

    container_name: Literal["trainer"] | None = Field(default=None, description="always trainer (the default)")
    resource: Literal[
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.ephemeral-storage",
    ] = Field(description="limits.cpu, limits.memory, limits.ephemeral-storage or the requests.* of them")
    divisor: Literal["1", "1m", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei"] | None = (
        Field(default=None, description="unit the value is divided by, e.g. 1Mi; default 1")
    )


class EnvVarSource(ApiModel):
    """core/v1 EnvVarSource: where a variable's value comes from; set exactly one."""

    secret_key_ref: SecretKeySelector | None = Field(
        default=None, description="a key of a Secret in this job's namespace; set exactly one source"
    )
    config_map_key_ref: ConfigMapKeySelector | None = Field(
        default=None, description="a key of a ConfigMap in this job's namespace; set exactly one source"
    )
    field_ref: ObjectFieldSelector | None = Field(default=None, description="a pod field; set exactly one source")
    resource_field_ref: ResourceFieldSelector | None = Field(
        default=None, description="a resource of the trainer container; set exactly one source"
    )

    rules = (exactly_one("secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef"),)
