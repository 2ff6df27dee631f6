"""`forgeline status`: a namespace's jobs as a pipeline tree, from the objects' own status.

Pure: objects in (the dicts the API server returns), text out. A stage hangs under its last
input (an RLHFJob under its reward model, its policy named beside it), so the usual pipeline
reads top to bottom as it runs. The objects are read defensively: an object written by an older
operator, by hand or by another tool may hold anything, and it is shown as well as it can be,
never with a traceback.
"""

from __future__ import annotations

from typing import Any

from forgeline.api.chain import JobKey, references_of
from forgeline.api.validate import InvalidManifest, parse_job


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any, default: str = "") -> str:
    """A field shown as text: strings as they are (one line, bounded), nothing else."""
    if not isinstance(value, str) or not value:
        return default
    return " ".join(value.split())[:200]


def _key(obj: dict[str, Any]) -> JobKey:
    return JobKey(_text(obj.get("kind"), "?"), _text(_mapping(obj.get("metadata")).get("name"), "?"))


def _parents(obj: dict[str, Any]) -> list[JobKey]:
    try:
        job = parse_job({k: v for k, v in obj.items() if k in ("apiVersion", "kind", "metadata", "spec")})
    except InvalidManifest:
        return []
    return [r.upstream for r in references_of(job) if r.upstream is not None]


def _columns(obj: dict[str, Any]) -> list[str]:
    status = _mapping(obj.get("status"))
    state = _text(status.get("state"), "Pending")
    progress = _text(_mapping(status.get("progress")).get("summary"), "-")
    output = _mapping(status.get("output"))
    where = _text(output.get("uri"))
    digest = _text(output.get("digest")).removeprefix("sha256:")[:12]
    if digest:
        where += f" sha256:{digest}"
    if state not in ("Succeeded", "Running"):
        conditions = status.get("conditions")
        cause = next(
            (
                c
                for c in (conditions if isinstance(conditions, list) else [])
                if isinstance(c, dict) and (c.get("status") == "False" or c.get("type") == "Failed")
            ),
            None,
        )
        if cause and _text(cause.get("reason")):
            where = f"{_text(cause.get('reason'))}: {_text(cause.get('message'))}"[:100]
    restarts = status.get("restarts")
    counted = isinstance(restarts, int) and not isinstance(restarts, bool) and restarts > 0
    return [state + (f" ({restarts} restarts)" if counted else ""), progress, where]


def render_tree(objects: list[Any]) -> str:
    by_key = {_key(o): o for o in objects if isinstance(o, dict)}
    parents = {k: _parents(o) for k, o in by_key.items()}
    children: dict[JobKey | None, list[JobKey]] = {}
    created = {k: _text(_mapping(o.get("metadata")).get("creationTimestamp")) for k, o in by_key.items()}
    for key in sorted(by_key, key=lambda k: created[k] + str(k)):
        known = [p for p in parents[key] if p in by_key]
        children.setdefault(known[-1] if known else None, []).append(key)
    rows: list[list[str]] = []
    seen: set[JobKey] = set()

    def walk(key: JobKey, prefix: str, last: bool, root: bool) -> None:
        seen.add(key)
        branch = "" if root else ("└─ " if last else "├─ ")
        label = f"{prefix}{branch}{key}"
        others = [p for p in parents[key] if p not in children or key not in children.get(p, [])]
        if others:
            label += f" (+ {', '.join(map(str, others))})"
        rows.append([label, *_columns(by_key[key])])
        kids = children.get(key, [])
        for i, kid in enumerate(kids):
            walk(kid, prefix + ("" if root else ("   " if last else "│  ")), i == len(kids) - 1, False)

    for root_key in children.get(None, []):
        walk(root_key, "", True, True)
    for key in by_key:  # members of a cycle have no root; show them anyway
        if key not in seen:
            walk(key, "", True, True)
    if not rows:
        return "no forgeline jobs"
    header = ["JOB", "STATE", "PROGRESS", "OUTPUT / CAUSE"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3] for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)
