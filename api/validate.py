"""Offline validation: every error a manifest has, each with its field path and what to do.

The same models generate the CRDs, and the body is judged as the API server judges it: camelCase
field names only (the models' Python names are not on the wire), null fields dropped (the
server prunes them), NaN and infinities refused (kubectl cannot send them).
tests/cluster/test_validate_parity.py holds both to the same verdict and field path on every
manifest of the invalid corpus. explain.py turns
pydantic's errors into messages for someone editing YAML.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from forgeline.api.chain import resolve
from forgeline.api.explain import (
    FieldError,
    Implicit,
    describe_value,
    explain,
    field_path,
    quote_hint,
    show_invisible,
)
from forgeline.api.fields import MAX_JOB_NAME
from forgeline.api.kinds import API_VERSION, KINDS, Job
from forgeline.api.manifests import Document, ManifestSyntaxError
from forgeline.api.semantics import metadata_problems, semantic_problems


@dataclass(frozen=True)
class Problem:
    """One error in one document of one file."""

    source: str
    subject: str  # "Kind/name" when known
    error: FieldError

    def __str__(self) -> str:
        subject = f" {self.subject}" if self.subject else ""
        return f"{self.source}{subject}: {self.error}"


class InvalidManifest(Exception):
    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__("; ".join(map(str, errors)))
        self.errors = list(errors)


def _without_nulls(value: Any) -> Any:
    """The API server prunes null fields before it validates (a field left empty is a field unset)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _non_finite(value: Any, loc: tuple[str | int, ...] = ()) -> Iterable[tuple[str | int, ...]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield loc
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, (*loc, i))


def _lookalike(body: dict[str, Any], name: str) -> str | None:
    """A key that reads as `name` once invisible characters are gone (a zero-width space before `kind`)."""
    for key in body:
        if isinstance(key, str) and key != name and "".join(c for c in key if c.isascii() and c.isalnum()) == name:
            return show_invisible(key)
    return None


def _header_errors(body: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    api_version, kind = body.get("apiVersion"), body.get("kind")
    for name, value, expected in (("apiVersion", api_version, (API_VERSION,)), ("kind", kind, tuple(KINDS))):
        if isinstance(value, str) and value in expected:
            continue
        if value is None:
            twin = _lookalike(body, name)
            got = f"it is missing; the key {twin} has invisible or non-ASCII characters" if twin else "it is missing"
        else:
            got = f"got {describe_value(value)}"
        close = difflib.get_close_matches(str(value), list(expected), n=1) if isinstance(value, str) else []
        hint = f"did you mean {close[0]}? " if close and name == "kind" else ""
        wanted = expected[0] if len(expected) == 1 else f"one of {', '.join(expected)}"
        errors.append(FieldError(name, f"{hint}must be {wanted} ({got})"))
    return errors


_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_RULE = "at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"


def _label_problem(key: str, value: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if (
        not _LABEL_NAME.match(name)
        or len(name) > 63
        or (prefix and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix)))
    ):
        return f"the key {key!r} must be NAME or PREFIX/NAME (NAME: {_LABEL_RULE}; PREFIX: a DNS subdomain)"
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return f"the value of {key} ({describe_value(value)}) must be empty or {_LABEL_RULE}"
    return None


def _metadata_errors(metadata: Any, implicit: Implicit) -> list[FieldError]:
    """labels and annotations, which the API server (not the CRD schema) checks."""
    if not isinstance(metadata, dict):
        return []
    errors: list[FieldError] = []
    for field in ("labels", "annotations"):
        entries = metadata.get(field)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            message = f"must be a mapping of text to text (got {describe_value(entries)})"
            errors.append(FieldError(f"metadata.{field}", message))
            continue
        for key, value in entries.items():
            if not isinstance(value, str):
                loc = ("metadata", field, key)
                message = f"must be a string (got {describe_value(value)}){quote_hint(implicit.get(loc), value)}"
                errors.append(FieldError(field_path(loc), message))
            elif field == "labels" and (problem := _label_problem(str(key), value)):
                errors.append(FieldError("metadata.labels", problem))
    return errors


def parse_job(body: Any, implicit: Implicit | None = None) -> Job:
    """A manifest body -> a job model, or InvalidManifest with every error found.

    `implicit` (from the loader) holds the source text of scalars YAML typed, for "quote it" hints."""
    if not isinstance(body, dict):
        shape = "a Kubernetes object with apiVersion, kind, metadata, spec"
        raise InvalidManifest([FieldError("", f"expected a mapping ({shape}), got {describe_value(body)}")])
    errors = _header_errors(body)
    if errors:
        raise InvalidManifest(errors)
    errors = _metadata_errors(body.get("metadata"), implicit or {})
    model = KINDS[body["kind"]]
    try:
        body = _without_nulls(body)
        not_numbers = list(_non_finite(body))
    except RecursionError:  # only objects from elsewhere (the loader caps depth): say so, don't crash
        raise InvalidManifest([FieldError("", "is nested too deeply to check")]) from None
    for loc in not_numbers:
        written = (implicit or {}).get(loc, "NaN or infinite")
        message = f"is {written}, which JSON (and so kubectl) cannot carry; write a number"
        errors.append(FieldError(field_path(loc), message))
    try:
        # By alias only: the Python (snake_case) names are not part of the API.
        job = model.model_validate(body, by_alias=True, by_name=False)
    except ValidationError as exc:
        errors += [explain(dict(e), model, implicit) for e in exc.errors() if tuple(e["loc"]) not in not_numbers]
    if errors:
        raise InvalidManifest(errors)
    return job


def subject_of(body: Any) -> str:
    if isinstance(body, dict):
        name = (body.get("metadata") or {}).get("name") if isinstance(body.get("metadata"), dict) else None
        if isinstance(body.get("kind"), str) and isinstance(name, str):
            return f"{body['kind']}/{show_invisible(name)}"
    return ""


def validate_documents(items: Iterable[Document | ManifestSyntaxError]) -> tuple[list[Job], list[Problem]]:
    """Parse every document and check the chain between them; return the jobs and all problems."""
    jobs: list[tuple[Document, Job]] = []
    problems: list[Problem] = []
    for item in items:
        if isinstance(item, ManifestSyntaxError):
            problems.append(Problem(item.source, "", FieldError(item.path, item.message)))
            continue
        try:
            jobs.append((item, parse_job(item.body, item.implicit)))
        except InvalidManifest as exc:
            problems.extend(Problem(item.source, subject_of(item.body), e) for e in exc.errors)
    by_key = {(j.metadata.namespace or "default", j.kind, j.metadata.name): d for d, j in jobs}
    if len(by_key) < len(jobs):
        seen: set[tuple[str, str, str]] = set()
        for doc, job in jobs:
            key = (job.metadata.namespace or "default", job.kind, job.metadata.name)
            if key in seen:
                problems.append(
                    Problem(
                        doc.source,
                        f"{job.kind}/{job.metadata.name}",
                        FieldError("metadata.name", "is used twice for this kind; rename one"),
                    )
                )
            seen.add(key)
    chain = resolve([j for _, j in jobs])
    for problem in chain.problems:
        if problem.code == "missing":
            continue  # the upstream may already exist in the namespace; `forgeline run` requires it
        doc = by_key.get((problem.namespace, problem.job.kind, problem.job.name))
        problems.append(
            Problem(doc.source if doc else "", str(problem.job), FieldError(problem.field, problem.message))
        )
    problems += _semantic_problems(jobs)
    return [j for _, j in jobs], problems


def _semantic_problems(jobs: Sequence[tuple[Document, Job]]) -> list[Problem]:
    """The operator's preflight checks that need no cluster (api/semantics.py), over these files' jobs."""
    named = {(j.metadata.namespace or "default", j.kind, j.metadata.name): j for _, j in jobs}
    out = []
    for doc, job in jobs:
        ns = job.metadata.namespace or "default"
        extra = job.metadata.model_extra or {}
        labels, annotations = extra.get("labels"), extra.get("annotations")
        found = semantic_problems(job, lambda k, ns=ns: named.get((ns, k.kind, k.name)))
        found += metadata_problems(
            labels if isinstance(labels, dict) else {}, annotations if isinstance(annotations, dict) else {}
        )
        out += [Problem(doc.source, f"{job.kind}/{job.metadata.name}", FieldError(f.field, f.message)) for f in found]
    return out


__all__ = ["MAX_JOB_NAME", "FieldError", "InvalidManifest", "Problem", "explain", "parse_job", "validate_documents"]
