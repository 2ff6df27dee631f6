"""Tenancy: a namespace is a wall, for references, for the artifact store and for secrets.

Each namespace owns `<store>/<namespace>/`: a job writes only there and reads nothing of another
namespace's prefix unless the cluster operator allows it (`--allowed-uri-prefix`); references
resolve in the job's own namespace; secrets are plain names (the schema has no namespace field).
"""

from __future__ import annotations

from typing import Any

import pytest
from testbed.builders import from_job, job, job_body, observed
from testbed.fakecluster import FakeCluster

from forgeline.api.validate import InvalidManifest, parse_job
from forgeline.operator.controller import Controller
from forgeline.operator.decide import decide
from forgeline.operator.policies.preflight import StorePolicy, tenancy_problems
from forgeline.operator.render import RenderSettings

STORE = "s3://store"
POLICY = StorePolicy(STORE)


def team_a(**spec: Any) -> Any:
    return job(job_body(namespace="team-a", **spec))


@pytest.mark.parametrize(
    "uri",
    [
        "s3://store/team-a/pretrainjob/base",
        "s3://store/team-a/x/",
        "s3://store/team-a/deep/er/path",
    ],
)
def test_an_output_inside_the_namespaces_prefix_is_allowed(uri: str) -> None:
    assert tenancy_problems(team_a(storage={"outputUri": uri}), POLICY) == []


@pytest.mark.parametrize(
    "uri",
    [
        "s3://store/team-b/pretrainjob/base",  # another namespace's artifact: its commit would replace it
        "s3://store/team-a-evil/x",  # a prefix of the name is not the namespace
        "s3://store/team-a/../team-b/x",  # climbing out
        "s3://elsewhere/x",  # outside the store
        "file:///etc/x",
    ],
)
def test_an_output_outside_the_namespaces_prefix_fails_naming_the_field(uri: str) -> None:
    (problem,) = tenancy_problems(team_a(storage={"outputUri": uri}), POLICY)
    assert problem.field == "spec.storage.outputUri" and "s3://store/team-a/" in problem.message


def test_the_default_output_is_always_inside() -> None:
    assert tenancy_problems(team_a(), POLICY) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"model": {"uri": "s3://store/team-b/pretrainjob/base"}}, "spec.model.uri"),
        ({"tokenizer": {"uri": "s3://store/team-b/tok"}}, "spec.tokenizer.uri"),
        ({"data": {"uri": "s3://store/team-b/data.jsonl"}}, "spec.data.uri"),
        ({"data": {"uri": "s3://store/team-a/../team-b/data.jsonl"}}, "spec.data.uri"),
    ],
)
def test_an_input_in_another_namespaces_prefix_fails_naming_the_field(spec: dict[str, Any], field: str) -> None:
    (problem,) = tenancy_problems(team_a(**spec), POLICY)
    assert problem.field == field and "another namespace's prefix" in problem.message


@pytest.mark.parametrize("uri", ["s3://store/team-a/data.jsonl", "s3://public-datasets/c4/", "file:///data/x"])
def test_inputs_of_the_own_prefix_or_outside_the_store_are_allowed(uri: str) -> None:
    assert tenancy_problems(team_a(data={"uri": uri}), POLICY) == []


def test_the_cluster_operator_can_allow_a_shared_prefix() -> None:
    shared = StorePolicy(STORE, allowed_prefixes=("s3://store/shared/",))
    body = {"model": {"uri": "s3://store/shared/llama"}, "storage": {"outputUri": "s3://store/shared/out"}}
    assert tenancy_problems(team_a(**body), shared) == []
    assert tenancy_problems(team_a(model={"uri": "s3://store/shared-not/x"}), shared) != []


def test_a_trespassing_job_is_failed_before_any_pod() -> None:
    body = job_body(namespace="team-a", storage={"outputUri": "s3://store/team-b/pretrainjob/base"})
    plan = decide(job(body), observed(body), RenderSettings(store=STORE))
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert plan.status["state"] == "Failed" and "spec.storage.outputUri" in failed["message"]
    assert plan.apply == []
    allowed = RenderSettings(store=STORE, allowed_uri_prefixes=("s3://store/team-b/",))
    assert decide(job(body), observed(body), allowed).apply


@pytest.mark.parametrize(
    "resources",
    [
        {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "namespace": "team-b"}}}]},
        {"env": [{"name": "T", "valueFrom": {"configMapKeyRef": {"name": "team-b/s", "key": "k"}}}]},
    ],
)
def test_secrets_and_config_maps_are_plain_names_in_the_jobs_namespace(resources: dict[str, Any]) -> None:
    with pytest.raises(InvalidManifest):
        parse_job(job_body(resources=resources))


def test_credentials_secret_is_a_plain_name() -> None:
    with pytest.raises(InvalidManifest) as refused:
        parse_job(job_body(storage={"credentialsSecret": "team-b/aws"}))
    assert [e.path for e in refused.value.errors] == ["spec.storage.credentialsSecret"]
    parse_job(job_body(storage={"credentialsSecret": "aws"}))


def test_a_downstream_is_woken_only_by_its_own_namespaces_upstream() -> None:
    """The operator's dependents index is cluster-wide: keys carry the namespace."""
    controller = Controller(FakeCluster(), RenderSettings(store=STORE))
    for ns in ("team-a", "team-b"):
        controller.job_changed(job_body("PretrainJob", "base", namespace=ns))
    controller.job_changed(job_body("LoRAJob", "tuned", namespace="team-a", model=from_job("PretrainJob", "base")))
    assert controller._dependents[("PretrainJob", "team-a", "base")] == {("LoRAJob", "team-a", "tuned")}
    assert not controller._dependents.get(("PretrainJob", "team-b", "base"))
