"""Chaining: a job's fromJob inputs come from its upstreams' status.output, with their digests.

A job waits (InputsReady False) until every upstream has Succeeded with an output; the reason
says which of three things is true, because the user's next step differs:

* WaitingForUpstream: the upstream is still running; nothing to do but wait;
* UpstreamMissing: no such job in the namespace; create it or fix the reference;
* UpstreamFailed: the upstream failed; fix and re-run it (this job picks it up when it succeeds).

Two more say the chain itself is wrong, reported on every member so whichever job a user looks
at names the fix: ChainCycle (the job's inputs lead back to itself) and KindMismatch (an upstream
kind that cannot feed the role). And a direct `uri` input, when the operator can read the store
(`--check-uri-inputs`, see artifacts.py), must have its manifest before any pod starts:
InputManifestMissing otherwise, rechecked every URI_RECHECK_SECONDS, since nothing watches a bucket.

The resolved inputs (URI and manifest digest) are frozen into status.inputs when the first attempt
starts, so later attempts, and anyone reading the status, see exactly which artifact was consumed
even if the upstream is re-run afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from forgeline.api.chain import ROLE_FIELDS, ChainProblem, JobKey, references_of, resolve
from forgeline.api.kinds import Job
from forgeline.api.stageconfig import ResolvedInput
from forgeline.api.validate import InvalidManifest, parse_job

Obj = dict[str, Any]
# Worst first: the reason reported when several inputs are not ready.
_SEVERITY = (
    "ChainCycle",
    "KindMismatch",
    "UpstreamFailed",
    "UpstreamMissing",
    "InputManifestMissing",
    "WaitingForUpstream",
)
_CHAIN_REASONS = {"cycle": "ChainCycle", "self": "ChainCycle", "kind": "KindMismatch"}
URI_RECHECK_SECONDS = 30.0


@dataclass(frozen=True)
class UriCheck:
    """What the operator found at a direct `uri` input: a manifest digest, or why not.

    found None means the store could not be asked (no credentials, unreachable): not a reason
    to hold the job, the stage checks again itself and exits 3 on a missing manifest."""

    found: bool | None
    digest: str | None = None
    message: str = ""


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


def chain_problems(job: Job, graph: list[Obj]) -> list[ChainProblem]:
    """This job's own chain problems (cycles through it, kinds that cannot feed a role), given the
    bodies of every job reachable upstream of it (`graph`, as the Reconciler walks it)."""
    key = JobKey(job.kind, job.metadata.name)
    jobs = [job]
    for body in graph:
        try:
            other = parse_job({k: v for k, v in body.items() if k in ("apiVersion", "kind", "metadata", "spec")})
        except InvalidManifest:
            continue
        if JobKey(other.kind, other.metadata.name) != key:
            jobs.append(other)
    return [p for p in resolve(jobs).problems if p.job == key and p.code in _CHAIN_REASONS]


def resolve_inputs(
    job: Job,
    upstreams: dict[str, Obj | None],
    *,
    chain: Sequence[ChainProblem] = (),
    uri_checks: dict[str, UriCheck] | None = None,
) -> InputsVerdict:
    """`upstreams` maps each role of upstream_keys(job) to the upstream's body, or None if absent;
    `chain` are chain_problems(job, ...); `uri_checks` maps roles with a direct uri to what the
    operator found there (absent: not checked)."""
    namespace = job.metadata.namespace or "default"
    resolved: dict[str, ResolvedInput] = {}
    records: list[Obj] = []
    completed: list[str] = []
    problems: list[tuple[str, str]] = [(_CHAIN_REASONS[p.code], f"{p.field}: {p.message}") for p in chain]
    for ref in references_of(job):
        if ref.upstream is None:
            assert ref.uri is not None
            check = (uri_checks or {}).get(ref.role)
            if check is not None and check.found is False:
                problems.append(("InputManifestMissing", f"{ROLE_FIELDS[ref.role]}.uri: {ref.uri}: {check.message}"))
                continue
            digest = check.digest if check is not None and check.found else None
            resolved[ref.role] = ResolvedInput(ref.uri, digest)
            records.append({"role": ref.role, "uri": ref.uri, **({"digest": digest} if digest else {})})
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
