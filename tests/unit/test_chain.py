"""chain: references, problems and order, on plain parsed jobs."""

from __future__ import annotations

from typing import Any

from forgeline.api.chain import JobKey, resolve
from forgeline.api.kinds import Job
from forgeline.api.validate import parse_job


def job(kind: str, name: str, namespace: str | None = None, **sources: Any) -> Job:
    spec: dict[str, Any] = {"data": {"synthetic": {}}}
    if kind == "RLHFJob":
        spec["rlhf"] = sources
    elif sources:
        spec["model"] = sources["model"]
    else:
        spec["model"] = {"config": {"layers": 1, "hiddenSize": 16, "heads": 2, "vocabSize": 64, "contextLength": 16}}
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return parse_job({"apiVersion": "forgeline.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec})


def ref(kind: str, name: str) -> dict[str, Any]:
    return {"fromJob": {"kind": kind, "name": name}}


def pipeline() -> list[Job]:
    return [
        job("LoRAJob", "tuned", model=ref("PretrainJob", "base")),
        job("RLHFJob", "aligned", policy=ref("PretrainJob", "base"), rewardModel=ref("RewardModelJob", "judge")),
        job("RewardModelJob", "judge", model=ref("PretrainJob", "base")),
        job("PretrainJob", "base"),
    ]


def test_order_puts_every_upstream_first() -> None:
    chain = resolve(pipeline())
    assert not chain.problems
    order = [str(k) for k in chain.order]
    assert order.index("PretrainJob/base") < order.index("RewardModelJob/judge") < order.index("RLHFJob/aligned")
    assert order.index("PretrainJob/base") < order.index("LoRAJob/tuned")
    assert len(order) == 4


def test_missing_upstream_is_reported_and_blocks_downstream() -> None:
    jobs = [j for j in pipeline() if j.kind != "RewardModelJob"]
    chain = resolve(jobs)
    assert [(p.code, str(p.job), p.field) for p in chain.problems] == [
        ("missing", "RLHFJob/aligned", "spec.rlhf.rewardModel.fromJob")
    ]
    assert "RewardModelJob/judge does not exist in namespace default" in chain.problems[0].message
    assert JobKey("RLHFJob", "aligned") not in chain.order


def test_existing_jobs_outside_the_file_satisfy_references() -> None:
    jobs = [j for j in pipeline() if j.kind != "PretrainJob"]
    chain = resolve(jobs, existing=[JobKey("PretrainJob", "base")])
    assert not chain.problems
    assert len(chain.order) == 3


def test_cycle_is_reported_on_every_member_and_downstream_is_blocked() -> None:
    jobs = [
        job("LoRAJob", "a", model=ref("LoRAJob", "b")),
        job("LoRAJob", "b", model=ref("LoRAJob", "a")),
        job("RewardModelJob", "c", model=ref("LoRAJob", "a")),
        job("PretrainJob", "free"),
    ]
    chain = resolve(jobs)
    assert sorted(str(p.job) for p in chain.problems if p.code == "cycle") == ["LoRAJob/a", "LoRAJob/b"]
    assert chain.blocked() == {JobKey("LoRAJob", "a"), JobKey("LoRAJob", "b"), JobKey("RewardModelJob", "c")}
    assert [str(k) for k in chain.order] == ["PretrainJob/free"]


def test_self_reference_is_reported() -> None:
    # The model rule rejects a self-reference at parse time; chain catches it for objects that
    # reach it by another path (e.g. read from the cluster), so build one with model_construct.
    jobs = [job("LoRAJob", "tuned", model=ref("PretrainJob", "base")), job("PretrainJob", "base")]
    tuned = jobs[0]
    bad_model = tuned.spec.model.model_copy(
        update={
            "from_job": tuned.spec.model.from_job.model_copy(  # type: ignore[union-attr]
                update={"kind": "LoRAJob", "name": "tuned"}
            )
        }
    )
    jobs[0] = tuned.model_copy(update={"spec": tuned.spec.model_copy(update={"model": bad_model})})
    chain = resolve(jobs)
    assert [(p.code, str(p.job)) for p in chain.problems] == [("self", "LoRAJob/tuned")]


def test_kind_that_cannot_feed_a_role_is_reported() -> None:
    jobs = [job("PretrainJob", "base"), job("RewardModelJob", "judge", model=ref("PretrainJob", "base"))]
    rlhf = job("RLHFJob", "aligned", policy=ref("PretrainJob", "base"), rewardModel=ref("RewardModelJob", "judge"))
    policy = rlhf.spec.rlhf.policy.model_copy(
        update={
            "from_job": rlhf.spec.rlhf.policy.from_job.model_copy(  # type: ignore[union-attr]
                update={"kind": "RewardModelJob", "name": "judge"}
            )
        }
    )
    rlhf = rlhf.model_copy(
        update={"spec": rlhf.spec.model_copy(update={"rlhf": rlhf.spec.rlhf.model_copy(update={"policy": policy})})}
    )
    chain = resolve([*jobs, rlhf])
    assert [(p.code, p.field) for p in chain.problems] == [("kind", "spec.rlhf.policy.fromJob")]
    assert "cannot be the policy of a RLHFJob" in chain.problems[0].message


def test_uri_inputs_are_references_without_upstream() -> None:
    chain = resolve([job("LoRAJob", "tuned", model={"uri": "s3://models/base"})])
    (reference,) = chain.references[JobKey("LoRAJob", "tuned")]
    assert reference.upstream is None and reference.uri == "s3://models/base"
    assert reference.field == "spec.model.uri"


def test_namesakes_in_two_namespaces_make_no_false_cycle() -> None:
    """A -> B in team-a and B -> A in team-b would be a cycle if names crossed namespaces."""
    jobs = [
        job("LoRAJob", "a", "team-a", model=ref("LoRAJob", "b")),
        job("LoRAJob", "b", "team-a", model=ref("PretrainJob", "base")),
        job("PretrainJob", "base", "team-a"),
        job("LoRAJob", "b", "team-b", model=ref("LoRAJob", "a")),
        job("LoRAJob", "a", "team-b", model=ref("PretrainJob", "base")),
        job("PretrainJob", "base", "team-b"),
    ]
    chain = resolve(jobs)
    assert not chain.problems
    assert len(chain.order) == 6
    assert {k.namespace for k in chain.order} == {"team-a", "team-b"}


def test_a_reference_never_finds_a_job_of_another_namespace() -> None:
    jobs = [job("PretrainJob", "base", "team-a"), job("LoRAJob", "tuned", "team-b", model=ref("PretrainJob", "base"))]
    (problem,) = resolve(jobs).problems
    assert problem.code == "missing" and problem.job == JobKey("LoRAJob", "tuned", "team-b")
    assert "PretrainJob/base does not exist in namespace team-b" in problem.message


def test_one_namespace_keeps_plain_keys() -> None:
    chain = resolve([job("PretrainJob", "base", "team-a")])
    assert chain.order == [JobKey("PretrainJob", "base")]
