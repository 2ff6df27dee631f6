"""Stage references, pure: resolve `fromJob` inputs within a namespace, order the stages, find
what cannot run (missing upstreams, self-references, cycles, kinds that cannot feed a role).

Used three ways: offline (`forgeline validate`), by the local runner to order a pipeline file,
and by the operator to report chain problems on every member of a broken chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from forgeline.api.kinds import Job, RLHFJob

# Which kinds may feed which input role of which kind.
LANGUAGE_MODELS = ("PretrainJob", "LoRAJob", "RLHFJob")
ALLOWED_UPSTREAM: dict[tuple[str, str], tuple[str, ...]] = {
    ("PretrainJob", "model"): LANGUAGE_MODELS,
    ("RewardModelJob", "model"): LANGUAGE_MODELS,
    ("LoRAJob", "model"): LANGUAGE_MODELS,
    ("RLHFJob", "policy"): LANGUAGE_MODELS,
    ("RLHFJob", "rewardModel"): ("RewardModelJob",),
}
ROLE_FIELDS = {"model": "spec.model", "policy": "spec.rlhf.policy", "rewardModel": "spec.rlhf.rewardModel"}


@dataclass(frozen=True, order=True)
class JobKey:
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class Reference:
    """One input of one job: an upstream job or a direct URI (or, for pretrain, nothing)."""

    consumer: JobKey
    role: str
    upstream: JobKey | None
    uri: str | None

    @property
    def field(self) -> str:
        return ROLE_FIELDS[self.role] + (".fromJob" if self.upstream else ".uri")


@dataclass(frozen=True)
class ChainProblem:
    namespace: str
    job: JobKey
    field: str
    code: Literal["missing", "self", "cycle", "kind"]
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
    sources = (
        {"policy": job.spec.rlhf.policy, "rewardModel": job.spec.rlhf.reward_model}
        if isinstance(job, RLHFJob)
        else {"model": job.spec.model}
    )
    refs = []
    for role, source in sources.items():
        ref = source.from_job
        upstream = JobKey(ref.kind, ref.name) if ref else None
        if upstream or source.uri:
            refs.append(Reference(key, role, upstream, source.uri))
    return refs


def resolve(jobs: Sequence[Job], existing: Iterable[JobKey] = ()) -> Chain:
    """Resolve the references among `jobs` (one namespace each; `existing` are other known jobs)."""
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
            allowed = ALLOWED_UPSTREAM[(key.kind, ref.role)]
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
