"""A fleet of jobs for tests and benchmarks at scale: many copies of the example pipeline across
namespaces, each stage with a status as the operator writes it (states, conditions, attempts,
progress, output), so `kubectl get llmjobs -A` and `forgeline status -A` read them as real ones.

No operator is needed: `seed` creates the objects and writes each status through the status
subresource. Pipeline `i` is the example's five stages named `<stage>-<i>` (base-007,
judge-007, ...), with its fromJob references renamed to match; what each stage's status says
cycles through the scenarios below, the same for the same `i`.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from forgeline.api.kinds import GROUP, KINDS, VERSION
from forgeline.api.manifests import load_documents

Obj = dict[str, Any]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipeline.yaml"
WHEN = "2026-01-01T00:00:00Z"
STEPS = 300


def _example() -> list[Obj]:
    # As kubectl reads it (YAML 1.2: `3e-3` is a number), not as PyYAML's 1.1 would.
    return [d.body for d in load_documents(EXAMPLE)]


def _rename_inputs(node: Any, suffix: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "fromJob" and isinstance(value, dict):
                value["name"] = f"{value['name']}-{suffix}"
            else:
                _rename_inputs(value, suffix)
    elif isinstance(node, list):
        for value in node:
            _rename_inputs(value, suffix)


def condition(type_: str, status: str, reason: str, message: str = "") -> Obj:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": WHEN}


def _progress(step: int) -> Obj:
    return {"step": step, "total": STEPS, "summary": f"{step}/{STEPS} ({100 * step // STEPS}%)", "updated": WHEN}


def _output(namespace: str, kind: str, name: str) -> Obj:
    digest = hashlib.sha256(f"{namespace}/{kind}/{name}".encode()).hexdigest()
    return {"uri": f"s3://forgeline/{namespace}/{kind.lower()}/{name}", "digest": f"sha256:{digest}"}


def status_for(scenario: str, namespace: str, kind: str, name: str, upstream: str = "") -> Obj:
    """A status as the operator writes it for `scenario` (a state, or Restarting/Failed causes)."""
    ready = condition("InputsReady", "True", "InputsReady", "every input is available")
    created = condition("Created", "True", "AttemptCreated", f"attempt 1: Job {name}-a1")
    base: Obj = {"attempt": 1, "restarts": 0, "evictions": 0, "startTime": WHEN, "observedGeneration": 1}
    if scenario == "Waiting":
        why = f"waiting for {upstream} (state Running, 120/{STEPS} (40%))"
        return {
            "state": "Waiting",
            "attempt": 0,
            "conditions": [condition("InputsReady", "False", "WaitingForUpstream", why)],
        }
    if scenario == "Created":
        pending = condition(
            "Running", "False", "Unschedulable", "0/16 nodes are available: 16 Insufficient nvidia.com/gpu"
        )
        return {**base, "state": "Created", "conditions": [ready, created, pending]}
    if scenario == "Running":
        running = condition("Running", "True", "AllPodsRunning", "attempt 1: all 2 pods running")
        return {**base, "state": "Running", "conditions": [ready, created, running], "progress": _progress(120)}
    if scenario == "Restarting":
        return {
            **base,
            "state": "Restarting",
            "attempt": 3,
            "restarts": 1,
            "evictions": 1,
            "progress": _progress(200),
            "conditions": [
                ready,
                created,
                condition("Running", "False", "Restarting", "starting attempt 3"),
                condition("Restarting", "True", "OOMKilled", "attempt 2: pod 1 OOMKilled (exit 137)"),
            ],
        }
    if scenario == "Suspended":
        return {
            **base,
            "state": "Suspended",
            "progress": _progress(60),
            "conditions": [
                ready,
                created,
                condition("Running", "False", "Suspended", "the job is suspended"),
                condition("Suspended", "True", "Suspended", "pods deleted, status kept"),
            ],
        }
    if scenario == "Failed":
        why = "attempt 4: pod 0 exited 1 (Error); backoffLimit 3 reached"
        return {
            **base,
            "state": "Failed",
            "attempt": 4,
            "restarts": 3,
            "completionTime": WHEN,
            "progress": _progress(90),
            "conditions": [
                ready,
                created,
                condition("Running", "False", "BackoffLimitExceeded", why),
                condition("Failed", "True", "BackoffLimitExceeded", why),
            ],
        }
    done = f"attempt 1: {STEPS} steps; output committed"
    return {
        **base,
        "state": "Succeeded",
        "completionTime": WHEN,
        "progress": _progress(STEPS),
        "output": _output(namespace, kind, name),
        "conditions": [
            ready,
            created,
            condition("Running", "False", "Succeeded", done),
            condition("Succeeded", "True", "Succeeded", done),
        ],
    }


# Per pipeline, the scenario of each stage (base, judge, aligned, tuned, compare), in turn.
SCENARIOS = (
    ("Succeeded", "Succeeded", "Succeeded", "Succeeded", "Succeeded"),
    ("Succeeded", "Running", "Waiting", "Running", "Waiting"),
    ("Running", "Waiting", "Waiting", "Waiting", "Waiting"),
    ("Succeeded", "Succeeded", "Restarting", "Failed", "Waiting"),
    ("Created", "Waiting", "Waiting", "Waiting", "Waiting"),
    ("Succeeded", "Succeeded", "Running", "Suspended", "Waiting"),
)


def fleet(jobs: int, namespaces: list[str]) -> Iterator[tuple[Obj, Obj]]:
    """`jobs` (body, status) pairs: pipelines of the example's five stages, round-robin over
    `namespaces`; the last pipeline is cut short when `jobs` is not a multiple of five."""
    stages = _example()
    made = 0
    i = 0
    while made < jobs:
        namespace, suffix = namespaces[i % len(namespaces)], f"{i:03d}"
        scenario = SCENARIOS[i % len(SCENARIOS)]
        for stage, state in zip(stages, scenario, strict=True):
            if made == jobs:
                return
            body = copy.deepcopy(stage)
            name = f"{body['metadata']['name']}-{suffix}"
            body["metadata"] = {"name": name, "namespace": namespace}
            _rename_inputs(body["spec"], suffix)
            upstream = f"PretrainJob/base-{suffix}"
            yield body, status_for(state, namespace, body["kind"], name, upstream)
            made += 1
        i += 1


def seed(api: Any, jobs: int, namespaces: list[str], workers: int = 8) -> list[Obj]:
    """Create the fleet with `api` (a kubernetes.client.CustomObjectsApi) and write each status
    through the status subresource; returns the bodies with their statuses."""

    def one(pair: tuple[Obj, Obj]) -> Obj:
        body, status = pair
        plural = KINDS[body["kind"]].plural
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, {"status": status})
        return {**body, "status": status}

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, fleet(jobs, namespaces)))
