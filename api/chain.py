"""Stage references, pure: resolve `fromJob` inputs within a namespace, order the stages, find
what cannot run (missing upstreams, self-references, cycles, kinds that cannot feed a role).

Used three ways: offline (`forgeline validate`), by the local runner to order a pipeline file,
and by the operator to report chain problems on every member of a broken chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from forgeline.api.gate import condition_problems
from forgeline.api.kinds import EvalJob, Job, RLHFJob

# Which kinds may feed which input role of which kind.
LANGUAGE_MODELS = ("PretrainJob", "LoRAJob", "RLHFJob")
ALLOWED_UPSTREAM: dict[tuple[str, str], tuple[str, ...]] = {
    ("PretrainJob", "model"): LANGUAGE_MODELS,
    ("RewardModelJob", "model"): LANGUAGE_MODELS,
    ("LoRAJob", "model"): LANGUAGE_MODELS,
    ("RLHFJob", "policy"): LANGUAGE_MODELS,
    ("RLHFJob", "rewardModel"): ("RewardModelJob",),
    ("EvalJob", "judge"): ("RewardModelJob",),
}
EVAL_MODEL_ROLE = "models."  # an EvalJob's model input: models.<name>


class _RoleFields(dict[str, str]):
    """role -> the spec path of its source; an EvalJob's models.<name> -> spec.models[<name>]."""

    def __missing__(self, role: str) -> str:
        if role.startswith(EVAL_MODEL_ROLE):
            return f"spec.models[{role.removeprefix(EVAL_MODEL_ROLE)}]"
        raise KeyError(role)


ROLE_FIELDS = _RoleFields(
    model="spec.model",
    policy="spec.rlhf.policy",
    rewardModel="spec.rlhf.rewardModel",
    judge="spec.rewardModel",
    gate="spec.gate",
)


def allowed_upstream(kind: str, role: str) -> tuple[str, ...]:
    """The kinds that may feed `role` of a `kind` job: every stage may be gated by an EvalJob."""
    if role == "gate":
        return ("EvalJob",)
    if role.startswith(EVAL_MODEL_ROLE) and kind == "EvalJob":
        return LANGUAGE_MODELS
    return ALLOWED_UPSTREAM[(kind, role)]


@dataclass(frozen=True, order=True)
class JobKey:
    """A job within one namespace (kind and name); `namespace` is set where keys of several
    namespaces meet (the operator's cluster-wide maps, resolve() over several namespaces), so a
    job in A is never taken for its namesake in B. References never leave a namespace: fromJob
    has no namespace field."""

    kind: str
    name: str
    namespace: str = ""

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"

    def within(self, namespace: str) -> JobKey:
        return JobKey(self.kind, self.name, namespace)


@dataclass(frozen=True)
class Reference:
    """One input of one job: an upstream job or a direct URI (or, for pretrain, nothing)."""

    consumer: JobKey
    role: str
    upstream: JobKey | None
    uri: str | None

    @property
    def field(self) -> str:
        if self.role == "gate":
            return "spec.gate.evalJob"
        return ROLE_FIELDS[self.role] + (".fromJob" if self.upstream else ".uri")


@dataclass(frozen=True)
class ChainProblem:
    namespace: str
    job: JobKey
    field: str
    code: Literal["missing", "self", "cycle", "kind", "gate"]
    message: str


@dataclass
class Chain:
    order: list[JobKey] = field(default_factory=list)  # runnable jobs, upstreams first
    references: dict[JobKey, list[Reference]] = field(default_factory=dict)
    problems: list[ChainProblem] = field(default_factory=list)

    def upstreams(self, key: JobKey) -> list[JobKey]:
        return [r.upstream for r in self.references.get(key, []) if r.upstream is not None]

    def blocked(self) -> set[JobKey]:
        """Jobs that cannot run: those with a problem, and everything downstream of them."""
        bad = {p.job for p in self.problems}
        changed = True
        while changed:
            changed = False
            for key, refs in self.references.items():
                if key not in bad and any(r.upstream in bad for r in refs):
                    bad.add(key)
                    changed = True
        return bad


def references_of(job: Job) -> list[Reference]:
    key = JobKey(job.kind, job.metadata.name)
    if isinstance(job, EvalJob):
        return _eval_references(key, job)
    sources = (
        {"policy": job.spec.rlhf.policy, "rewardModel": job.spec.rlhf.reward_model}
        if isinstance(job, RLHFJob)
        else {"model": job.spec.model}
    )
    refs = []
    for role, source in sources.items():
        if source is None:  # an optional input left out (dpo's rewardModel)
            continue
        ref = source.from_job
        upstream = JobKey(ref.kind, ref.name) if ref else None
        if upstream or source.uri:
            refs.append(Reference(key, role, upstream, source.uri))
    if job.spec.gate is not None:  # the gate's EvalJob is waited for like an input
        refs.append(Reference(key, "gate", JobKey("EvalJob", job.spec.gate.eval_job), None))
    return refs


def _gate_problems(jobs: Sequence[Job], namespaces: dict[JobKey, str]) -> list[ChainProblem]:
    """A gate whose EvalJob is among `jobs` asks only for what that EvalJob will record.

    The operator ignores these (code "gate"): it judges the condition when the EvalJob is done,
    from what was recorded; offline, `forgeline validate` and `forgeline run` refuse it up front.
    """
    evals = {j.metadata.name: j for j in jobs if isinstance(j, EvalJob)}
    problems = []
    for job in jobs:
        gate = None if isinstance(job, EvalJob) else job.spec.gate
        target = evals.get(gate.eval_job) if gate is not None else None
        if gate is None or target is None:
            continue
        key = JobKey(job.kind, job.metadata.name)
        for message in condition_problems(
            gate.condition,
            models=[m.name for m in target.spec.models],
            baseline=target.spec.baseline,
            judged=target.spec.reward_model is not None,
            synthetic=target.spec.data.synthetic is not None,
        ):
            problems.append(ChainProblem(namespaces[key], key, "spec.gate.condition", "gate", message))
    return problems


def _eval_references(key: JobKey, job: EvalJob) -> list[Reference]:
    sources: list[tuple[str, Any]] = [(f"{EVAL_MODEL_ROLE}{m.name}", m) for m in job.spec.models]
    if job.spec.reward_model is not None:
        sources.append(("judge", job.spec.reward_model))
    refs = []
    for role, source in sources:
        ref = source.from_job
        refs.append(Reference(key, role, JobKey(ref.kind, ref.name) if ref else None, source.uri))
    return refs


def resolve(jobs: Sequence[Job], existing: Iterable[JobKey] = ()) -> Chain:
    """Resolve the references among `jobs`, each within its own namespace (`existing` are other
    known jobs). Jobs of one namespace keep plain keys; across namespaces every key carries its
    namespace, and a reference only ever finds a job of its own namespace."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.metadata.namespace or "default", []).append(job)
    if len(groups) <= 1:
        return _resolve_namespace(jobs, existing)
    known = list(existing)
    chain = Chain()
    for namespace, group in groups.items():
        part = _resolve_namespace(group, [JobKey(k.kind, k.name) for k in known if k.namespace in ("", namespace)])
        chain.order += [k.within(namespace) for k in part.order]
        for key, refs in part.references.items():
            chain.references[key.within(namespace)] = [
                replace(r, consumer=key.within(namespace), upstream=r.upstream and r.upstream.within(namespace))
                for r in refs
            ]
        chain.problems += [replace(p, job=p.job.within(namespace)) for p in part.problems]
    return chain


def _resolve_namespace(jobs: Sequence[Job], existing: Iterable[JobKey] = ()) -> Chain:
    chain = Chain()
    namespaces = {JobKey(j.kind, j.metadata.name): j.metadata.namespace or "default" for j in jobs}
    known = set(namespaces) | set(existing)
    for job in jobs:
        key = JobKey(job.kind, job.metadata.name)
        chain.references[key] = references_of(job)
        for ref in chain.references[key]:
            if ref.upstream is None:
                continue
            ns = namespaces[key]
            allowed = allowed_upstream(key.kind, ref.role)
            if ref.upstream == key:
                chain.problems.append(
                    ChainProblem(
                        ns, key, ref.field, "self", "names this job itself; a job cannot consume its own output"
                    )
                )
            elif ref.upstream.kind not in allowed:
                chain.problems.append(
                    ChainProblem(
                        ns,
                        key,
                        ref.field,
                        "kind",
                        f"{ref.upstream} cannot be the {ref.role} of a {key.kind}; use one of {', '.join(allowed)}",
                    )
                )
            elif ref.upstream not in known:
                chain.problems.append(
                    ChainProblem(
                        ns,
                        key,
                        ref.field,
                        "missing",
                        f"{ref.upstream} does not exist in namespace {ns}; create it or fix the name",
                    )
                )
    chain.problems += _gate_problems(jobs, namespaces)
    for cycle in _cycles(chain.references):
        loop = " -> ".join(str(k) for k in [*cycle, cycle[0]])
        for key in cycle:
            ref = next(r for r in chain.references[key] if r.upstream in cycle)
            chain.problems.append(
                ChainProblem(
                    namespaces.get(key, "default"), key, ref.field, "cycle", f"is part of a cycle ({loop}); break it"
                )
            )
    chain.order = _topological(chain, [JobKey(j.kind, j.metadata.name) for j in jobs])
    return chain


def _cycles(references: dict[JobKey, list[Reference]]) -> list[list[JobKey]]:
    """Strongly connected components with more than one member (Tarjan, iteration order stable)."""
    graph = {
        k: [r.upstream for r in refs if r.upstream in references and r.upstream != k] for k, refs in references.items()
    }
    index: dict[JobKey, int] = {}
    low: dict[JobKey, int] = {}
    stack: list[JobKey] = []
    on_stack: set[JobKey] = set()
    found: list[list[JobKey]] = []

    def visit(node: JobKey) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            assert nxt is not None
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(list(reversed(component)))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _topological(chain: Chain, keys: list[JobKey]) -> list[JobKey]:
    blocked = chain.blocked()
    order: list[JobKey] = []
    placed: set[JobKey] = set()
    pending = [k for k in keys if k not in blocked]
    while pending:
        ready = [k for k in pending if all(u in placed or u not in chain.references for u in chain.upstreams(k))]
        if not ready:  # unreachable: cycles are blocked
            break
        for k in ready:
            order.append(k)
            placed.add(k)
        pending = [k for k in pending if k not in placed]
    return order
