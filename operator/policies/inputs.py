"""Chaining: a job's fromJob inputs come from its upstreams' status.output, with their digests.

A job waits (InputsReady False) until every upstream has Succeeded with an output; the reason
says which of three things is true, because the user's next step differs:

* WaitingForUpstream: the upstream is still running; nothing to do but wait;
* UpstreamMissing: no such job in the namespace; create it or fix the reference;
* UpstreamFailed: the upstream failed; fix and re-run it (this job picks it up when it succeeds).

The resolved inputs (URI and manifest digest) are frozen into status.inputs when the first attempt
starts, so later attempts, and anyone reading the status, see exactly which artifact was consumed
even if the upstream is re-run afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forgeline.operator.api.kinds import Job
from forgeline.operator.chain import ROLE_FIELDS, JobKey, references_of
from forgeline.operator.stageconfig import ResolvedInput

Obj = dict[str, Any]
# Worst first: the reason reported when several inputs are not ready.
_SEVERITY = ("UpstreamFailed", "UpstreamMissing", "WaitingForUpstream")


@dataclass(frozen=True)
class InputsVerdict:
    ready: bool
    reason: str
    message: str
    resolved: dict[str, ResolvedInput] = field(default_factory=dict)
    records: list[Obj] = field(default_factory=list)  # status.inputs, wire form
    upstream_completed: list[str] = field(default_factory=list)  # upstream completionTimes (hand-off)


def upstream_keys(job: Job) -> dict[str, JobKey]:
    """role -> upstream job, for the inputs that name one."""
    return {r.role: r.upstream for r in references_of(job) if r.upstream is not None}


def resolve_inputs(job: Job, upstreams: dict[str, Obj | None]) -> InputsVerdict:
    """`upstreams` maps each role of upstream_keys(job) to the upstream's body, or None if absent."""
    namespace = job.metadata.namespace or "default"
    resolved: dict[str, ResolvedInput] = {}
    records: list[Obj] = []
    completed: list[str] = []
    problems: list[tuple[str, str]] = []
    for ref in references_of(job):
        if ref.upstream is None:
            assert ref.uri is not None
            resolved[ref.role] = ResolvedInput(ref.uri, None)
            records.append({"role": ref.role, "uri": ref.uri})
            continue
        where = f"{ROLE_FIELDS[ref.role]}.fromJob"
        body = upstreams.get(ref.role)
        if body is None:
            problems.append(
                ("UpstreamMissing", f"{where}: {ref.upstream} does not exist in namespace {namespace}; create it")
            )
            continue
        status = body.get("status") or {}
        state = status.get("state") or "Created"
        if state == "Failed":
            failed: Obj = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"), {})
            why = failed.get("message") or failed.get("reason") or "no reason given"
            problems.append(("UpstreamFailed", f"{where}: {ref.upstream} failed ({why}); fix it and run it again"))
            continue
        output = status.get("output") or {}
        if state != "Succeeded" or not output.get("uri"):
            progress = (status.get("progress") or {}).get("summary")
            detail = f"state {state}" + (f", {progress}" if progress else "")
            problems.append(("WaitingForUpstream", f"waiting for {ref.upstream} ({detail})"))
            continue
        resolved[ref.role] = ResolvedInput(output["uri"], output.get("digest"))
        record = {"role": ref.role, "kind": ref.upstream.kind, "name": ref.upstream.name, "uri": output["uri"]}
        if output.get("digest"):
            record["digest"] = output["digest"]
        records.append(record)
        if status.get("completionTime"):
            completed.append(status["completionTime"])
    if problems:
        problems.sort(key=lambda p: _SEVERITY.index(p[0]))
        return InputsVerdict(False, problems[0][0], "; ".join(m for _, m in problems))
    return InputsVerdict(True, "InputsResolved", _describe(records), resolved, records, completed)


def frozen_inputs(records: list[Obj]) -> dict[str, ResolvedInput]:
    """The inputs recorded in status.inputs, for attempts after the first."""
    return {r["role"]: ResolvedInput(r["uri"], r.get("digest")) for r in records}


def _describe(records: list[Obj]) -> str:
    if not records:
        return "no input model (from scratch)"
    parts = []
    for r in records:
        source = f"{r['kind']}/{r['name']} " if r.get("kind") else ""
        parts.append(f"{r['role']}: {source}{r['uri']}" + (f" ({r['digest'][:19]})" if r.get("digest") else ""))
    return "; ".join(parts)
