"""Offline validation: every error a manifest has, each with its field path and what to do.

The same models generate the CRDs, so what passes here passes the API server's schema and CEL
rules (the cluster tests run the invalid corpus against both). Pydantic's messages are written
for programmers; `explain` rewrites them for someone editing YAML.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from forgeline.api.chain import resolve
from forgeline.api.fields import DNS_LABEL, ENV_NAME, MAX_JOB_NAME, QUANTITY, URI
from forgeline.api.kinds import API_VERSION, KINDS, Job
from forgeline.api.manifests import Document, ManifestSyntaxError

_PATTERN_HINTS = {
    DNS_LABEL: "must be a DNS label: lowercase letters, digits and '-', starting with a letter "
    "and ending with a letter or digit",
    QUANTITY: "must be a Kubernetes quantity such as 4, 500m, 16Gi",
    URI: "must be a URI with a scheme: s3://bucket/prefix, file:///path, https://… or synthetic://",
    ENV_NAME: "must be a valid environment variable name (letters, digits, '_', '-', '.'; not starting with a digit)",
    r"^https?://\S+$": "must be an http:// or https:// URL",
}


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


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


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_of(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names accepted at `loc` of a job model, for 'did you mean'."""
    from pydantic import BaseModel

    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        current = field.annotation
        for arg in getattr(current, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
                break
        origin_args = getattr(current, "__args__", None)
        if origin_args and getattr(current, "__origin__", None) is list:
            current = origin_args[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def explain(error: dict[str, Any], model: type[Any]) -> FieldError:
    """One pydantic error -> a message a YAML author can act on."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    path = _path(loc)
    if kind == "forgeline_rule":
        field = ctx.get("field")
        return FieldError(_path((*loc, *field.split("."))) if field else path, ctx["message"])
    if kind == "missing":
        return FieldError(path, "required field is missing; add it")
    if kind == "extra_forbidden":
        known = _fields_of(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"remove it (known fields: {', '.join(known)})"
        return FieldError(path, f"unknown field; {hint}")
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(ctx.get("pattern", ""), f"must match {ctx.get('pattern')}")
        return FieldError(path, f"{hint} (got {_got(value)})")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = next(iter(ctx.values()))
        word = {
            "greater_than_equal": "at least",
            "greater_than": "greater than",
            "less_than_equal": "at most",
            "less_than": "less than",
        }[kind]
        return FieldError(path, f"must be {word} {bound} (got {_got(value)})")
    if kind == "string_too_long":
        return FieldError(path, f"is too long ({len(str(value))} characters; at most {ctx['max_length']})")
    if kind == "string_too_short":
        return FieldError(path, "must not be empty")
    if kind == "too_long":
        return FieldError(path, f"has too many entries ({ctx.get('actual_length')}; at most {ctx['max_length']})")
    if kind == "too_short":
        return FieldError(path, f"needs at least {ctx['min_length']} entr{'y' if ctx['min_length'] == 1 else 'ies'}")
    if kind == "literal_error":
        return FieldError(path, f"must be one of {ctx['expected']} (got {_got(value)})")
    type_words = {
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_type": "a number",
        "bool_type": "true or false",
        "string_type": "a string",
        "model_type": "a mapping of fields",
        "model_attributes_type": "a mapping of fields",
        "dict_type": "a mapping",
        "list_type": "a list",
    }
    if kind in type_words:
        return FieldError(path, f"must be {type_words[kind]} (got {_got(value)})")
    return FieldError(path, error["msg"])


def parse_job(body: Any) -> Job:
    """A manifest body -> a job model, or InvalidManifest with every error found."""
    if not isinstance(body, dict):
        raise InvalidManifest(
            [
                FieldError(
                    "",
                    f"expected a mapping (a Kubernetes object with apiVersion, kind, metadata, spec), got {_got(body)}",
                )
            ]
        )
    errors: list[FieldError] = []
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if api_version != API_VERSION:
        got = "it is missing" if api_version is None else f"got {_got(api_version)}"
        errors.append(FieldError("apiVersion", f"must be {API_VERSION} ({got})"))
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        got = "it is missing" if kind is None else f"got {_got(kind)}"
        errors.append(FieldError("kind", f"{hint}must be one of {', '.join(KINDS)} ({got})"))
    if errors:
        raise InvalidManifest(errors)
    model = KINDS[kind]
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InvalidManifest([explain(dict(e), model) for e in exc.errors()]) from None


def subject_of(body: Any) -> str:
    if isinstance(body, dict):
        name = (body.get("metadata") or {}).get("name") if isinstance(body.get("metadata"), dict) else None
        if isinstance(body.get("kind"), str) and isinstance(name, str):
            return f"{body['kind']}/{name}"
    return ""


def validate_documents(items: Iterable[Document | ManifestSyntaxError]) -> tuple[list[Job], list[Problem]]:
    """Parse every document and check the chain between them; return the jobs and all problems."""
    jobs: list[tuple[Document, Job]] = []
    problems: list[Problem] = []
    for item in items:
        if isinstance(item, ManifestSyntaxError):
            problems.append(Problem(str(item).split(":", 1)[0], "", FieldError("", str(item).split(": ", 1)[1])))
            continue
        try:
            jobs.append((item, parse_job(item.body)))
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
    return [j for _, j in jobs], problems


__all__ = ["MAX_JOB_NAME", "FieldError", "InvalidManifest", "Problem", "explain", "parse_job", "validate_documents"]
