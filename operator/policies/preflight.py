"""Preflight: what must hold before the first attempt, checked once, before any pod exists.

A job that fails here is Failed at once, with a condition naming the field, and never gets a pod:
a gang scheduled only to exit on a setting the operator could have read wastes a cluster's GPUs
and the user's time. Three kinds of check, all pure:

* tenancy: each namespace owns `<store>/<namespace>/` of the artifact store. A job writes only
  there (spec.storage.outputUri; a commit replaces what is at its URI, so an output in another
  namespace's prefix would overwrite that team's artifact) and reads nothing of another
  namespace's prefix, unless the cluster operator allows a prefix (`--allowed-uri-prefix`,
  Helm operator.allowedUriPrefixes). docs/trust-model.md says what this does and does not protect;
* metadata: labels and annotations that collide with the keys Kubernetes or forgeline manage
  (CEL in a CRD cannot see metadata.labels, so the API server cannot refuse them);
* semantics across jobs (api/semantics.py, shared with `forgeline validate`): an RLHF policy's
  context length is its upstream's.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from forgeline.api.chain import ROLE_FIELDS, JobKey
from forgeline.api.kinds import Job, PretrainJob, model_sources
from forgeline.api.semantics import SemanticProblem, metadata_problems, semantic_problems
from forgeline.api.stageconfig import output_uri

_SOURCE_FIELDS = ROLE_FIELDS  # role -> spec path, every kind's (an EvalJob's models.<name> too)


@dataclass(frozen=True)
class StorePolicy:
    """The artifact store's layout and the cluster operator's exceptions to it."""

    store: str
    allowed_prefixes: tuple[str, ...] = ()

    def namespace_prefix(self, namespace: str) -> str:
        return f"{_root(self.store)}/{namespace}/"

    def allowed(self, uri: str) -> bool:
        return any(_within(uri, prefix) for prefix in self.allowed_prefixes)


def _root(uri: str) -> str:
    return uri.rstrip("/")


def _normal(uri: str) -> str | None:
    """The URI with its path normalised; None when it climbs with '..' (never a store location)."""
    scheme, sep, rest = uri.partition("://")
    if not sep or any(part == ".." for part in rest.split("/")):
        return None
    return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}" + ("/" if rest.endswith("/") else "")


def _within(uri: str, prefix: str) -> bool:
    normal, base = _normal(uri), _normal(prefix)
    if normal is None or base is None:
        return False
    base = base.rstrip("/") + "/"
    return (normal.rstrip("/") + "/").startswith(base)


def input_uris(job: Job) -> list[tuple[str, str]]:
    """(field path, uri) of every artifact the job reads directly by URI."""
    out = [(f"{_SOURCE_FIELDS[role]}.uri", s.uri) for role, s in model_sources(job).items() if s.uri]
    if isinstance(job, PretrainJob) and job.spec.tokenizer.uri:
        out.append(("spec.tokenizer.uri", job.spec.tokenizer.uri))
    if job.spec.data.uri:
        out.append(("spec.data.uri", job.spec.data.uri))
    return out


def tenancy_problems(job: Job, policy: StorePolicy) -> list[SemanticProblem]:
    namespace = job.metadata.namespace or "default"
    own = policy.namespace_prefix(namespace)
    problems = []
    if job.spec.storage.output_uri and not (
        _within(output_uri(policy.store, job), own) or policy.allowed(job.spec.storage.output_uri)
    ):
        problems.append(
            SemanticProblem(
                "spec.storage.outputUri",
                f"{job.spec.storage.output_uri} is outside this namespace's prefix of the store ({own}); leave it "
                "out (the default is inside) or write under that prefix",
            )
        )
    store = _root(policy.store) + "/"
    for where, uri in input_uris(job):
        if _within(uri, own) or policy.allowed(uri):
            continue
        if _normal(uri) is None or _within(uri, store):
            problems.append(
                SemanticProblem(
                    where,
                    f"{uri} is in another namespace's prefix of the store; a job reads only its own namespace's "
                    f"artifacts ({own}) unless the cluster operator allows that prefix (--allowed-uri-prefix)",
                )
            )
    return problems


def preflight_problems(
    job: Job,
    *,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    policy: StorePolicy,
    upstreams: Iterable[Job] = (),
) -> Sequence[SemanticProblem]:
    """Everything that keeps `job` from starting; `upstreams` are the jobs it (transitively) reads."""
    known = {JobKey(j.kind, j.metadata.name): j for j in upstreams}
    return [
        *tenancy_problems(job, policy),
        *metadata_problems(labels, annotations),
        *semantic_problems(job, known.get),
    ]
