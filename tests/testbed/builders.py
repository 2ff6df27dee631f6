"""Builders for tests: job objects of each kind, batch Jobs, pods and Observed snapshots.

Plain dicts shaped as the API server returns them, so the code under test reads them exactly as
it reads a real cluster's. One module for every test (JobSet's pkg/util/testing/wrappers.go): a
test states only what matters to it (`pod(1, "Failed", exit_code=137, reason="OOMKilled")`) and
the rest is filled the same way everywhere. Label and annotation keys, exit codes and the
reserved env names are imported from their owners, never retyped.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from forgeline.api.kinds import API_VERSION, Job
from forgeline.api.validate import parse_job
from forgeline.operator.decide import Observed
from forgeline.operator.policies.inputs import UriCheck
from forgeline.operator.render import CONTAINER, LABEL_RANK

Obj = dict[str, Any]

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CREATED = T0.strftime("%Y-%m-%dT%H:%M:%SZ")  # T0 on the wire
FINISHED = "2026-01-01T00:01:00Z"  # when a built container terminated, unless told
TINY_MODEL = {"layers": 2, "hiddenSize": 64, "heads": 4, "vocabSize": 512, "contextLength": 64}
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods


def from_job(kind: str, name: str) -> Obj:
    """An input that names an upstream job (`fromJob`)."""
    return {"fromJob": {"kind": kind, "name": name}}


FROM_BASE = from_job("PretrainJob", "base")


# -- job objects (the custom resources) ------------------------------------------------------


def job_body(
    kind: str = "PretrainJob",
    name: str = "base",
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    status: Obj | None = None,
    **spec: Any,
) -> Obj:
    """A valid job object of `kind`, as stored: uid `uid-<name>`, generation 1. `spec` keys (wire
    names: `resources`, `runPolicy`, `model`, `rlhf`, ...) replace the defaults: a tiny model from
    config for PretrainJob, `fromJob` PretrainJob/base for RewardModelJob and LoRAJob, direct URIs
    for RLHFJob, and synthetic data."""
    body_spec: Obj = {"data": {"synthetic": {}}}
    if kind == "PretrainJob":
        body_spec["model"] = {"config": dict(TINY_MODEL)}
    elif kind == "RLHFJob":
        body_spec["rlhf"] = {"policy": {"uri": "s3://m/p"}, "rewardModel": {"uri": "s3://m/r"}}
    else:
        body_spec["model"] = copy.deepcopy(FROM_BASE)
    body_spec.update(copy.deepcopy(spec))
    metadata: Obj = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    body: Obj = {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": body_spec}
    if status is not None:
        body["status"] = copy.deepcopy(status)
    return body


def pretrain(name: str = "base", nodes: int = 2, **run_policy: Any) -> Obj:
    """A PretrainJob of `nodes` 8-GPU nodes; keyword arguments are spec.runPolicy fields."""
    return job_body(name=name, resources={"nodes": nodes, "gpusPerNode": 8}, runPolicy=run_policy)


def lora(name: str = "tuned", model: Obj | None = None, **spec: Any) -> Obj:
    """A LoRAJob on `model` (default: the output of PretrainJob/base)."""
    return job_body("LoRAJob", name, model=model or FROM_BASE, **spec)


def rlhf(policy: Obj, reward: Obj, *, name: str = "aligned", namespace: str = "default") -> Obj:
    return job_body("RLHFJob", name, namespace=namespace, rlhf={"policy": policy, "rewardModel": reward})


def job(body: Obj | None = None) -> Job:
    """The parsed model of a job object (default: `pretrain()`)."""
    return parse_job(body if body is not None else pretrain())


def with_status(body: Obj, status: Obj) -> Obj:
    """The job object after a status write (as the next pass reads it)."""
    return {**body, "status": copy.deepcopy(status)}


def upstream_status(state: str | None, output: Obj | None = None, **status: Any) -> Obj:
    """An upstream job object reduced to what chaining reads: its status (nothing at all for None)."""
    if state is None:
        return {}
    body: Obj = {"status": {"state": state, **status}}
    if output:
        body["status"]["output"] = output
    return body


def condition(type_: str, reason: str, status: str = "True", message: str = "") -> Obj:
    """A metav1.Condition as it sits in a status (job objects, Jobs and pods alike)."""
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": CREATED}


# -- batch Jobs --------------------------------------------------------------------------------


def batch_job(
    name: str = "base-pretrain-a1",
    *,
    completions: int = 2,
    labels: dict[str, str] | None = None,
    owner_uid: str | None = None,
    uid: str | None = None,
    conditions: Iterable[tuple[str, str]] = (),
    suspend: bool = False,
) -> Obj:
    """A batch/v1 Job as the API server returns it; `conditions` are (type, reason), all True;
    `owner_uid` adds the controller ownerReference to a job object of that uid."""
    metadata: Obj = {"name": name, "namespace": "default", "creationTimestamp": CREATED}
    if uid:
        metadata["uid"] = uid
    if labels:
        metadata["labels"] = dict(labels)
    if owner_uid:
        metadata["ownerReferences"] = [{"apiVersion": API_VERSION, "kind": "PretrainJob", "uid": owner_uid}]
    spec: Obj = {"completions": completions, "parallelism": completions}
    if suspend:
        spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": spec,
        "status": {"conditions": [condition(t, r) for t, r in conditions]},
    }


def stored(obj: Obj, at: datetime = T0) -> Obj:
    """A rendered object as the API server returns it once created (`at`): with its uid and
    creationTimestamp, which the startup deadline counts from."""
    out = copy.deepcopy(obj)
    out["metadata"].setdefault("uid", f"uid-{out['metadata']['name']}")
    out["metadata"].setdefault("creationTimestamp", at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return out


def completed(child: Obj) -> Obj:
    """The batch Job after the Job controller marked it Complete."""
    done = copy.deepcopy(child)
    done["status"] = {"conditions": [condition("Complete", "CompletionsReached")]}
    return done


# -- pods --------------------------------------------------------------------------------------


def pod(
    index: int = 0,
    phase: str = "Running",
    *,
    child: str = "base-pretrain-a1",
    name: str | None = None,
    labels: dict[str, str] | None = None,
    exit_code: int | None = None,
    reason: str | None = None,
    message: str = "",
    finished_at: str = FINISHED,
    disrupted: bool = False,
    waiting: str | None = None,
    unschedulable: str | None = None,
    deleting: bool = False,
) -> Obj:
    """Pod `index` (its completion index, the node rank) of the batch Job `child`.

    exit_code: the trainer container terminated with it (reason: "Completed" for 0, else "Error");
    disrupted: the API server's DisruptionTarget condition (eviction, preemption, drain);
    waiting: the container waits with this reason (ImagePullBackOff...);
    unschedulable: the scheduler's message on PodScheduled=False.
    """
    status: Obj = {"phase": phase, "conditions": []}
    if phase != "Pending":
        status["podIP"] = f"10.0.0.{index}"
    if exit_code is not None:
        terminated = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "message": message,
            "finishedAt": finished_at,
        }
        status["containerStatuses"] = [{"name": CONTAINER, "state": {"terminated": terminated}}]
    if waiting is not None:
        state = {"waiting": {"reason": waiting, "message": f"{waiting} details"}}
        status["containerStatuses"] = [{"name": CONTAINER, "state": state}]
    if unschedulable is not None:
        status["conditions"].append(condition("PodScheduled", "Unschedulable", "False", unschedulable))
    if disrupted:
        status["conditions"].append(condition("DisruptionTarget", "EvictionByEvictionAPI"))
    metadata: Obj = {
        "name": name or f"{child}-{index}-abcde",
        "namespace": "default",
        "labels": {**(labels or {}), JOB_NAME_LABEL: child},
        "annotations": {LABEL_RANK: str(index)},
    }
    if deleting:
        metadata["deletionTimestamp"] = CREATED
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": status}


def pod_of(child: Obj, index: int, phase: str = "Running", **kw: Any) -> Obj:
    """Pod `index` of a rendered batch Job, labelled from its pod template as the Job controller does."""
    labels = dict(child["spec"]["template"]["metadata"]["labels"])
    return pod(index, phase, child=child["metadata"]["name"], labels=labels, **kw)


def gang(child: Obj, phase: str = "Running", **kw: Any) -> list[Obj]:
    """Every pod of a rendered batch Job, all in `phase`."""
    return [pod_of(child, i, phase, **kw) for i in range(child["spec"]["completions"])]


# -- snapshots ---------------------------------------------------------------------------------


def observed(
    body: Obj,
    *,
    children: Iterable[Obj] = (),
    pods: Iterable[Obj] = (),
    upstreams: dict[str, Obj | None] | None = None,
    now: datetime = T0,
    progress: Obj | None = None,
    graph: Iterable[Obj] = (),
    uri_checks: dict[str, UriCheck] | None = None,
) -> Observed:
    """What one reconcile pass sees (decide's input)."""
    return Observed(
        body=copy.deepcopy(body),
        children=list(children),
        pods=list(pods),
        upstreams=dict(upstreams or {}),
        now=now,
        progress=progress,
        graph=list(graph),
        uri_checks=dict(uri_checks or {}),
    )
