"""`forgeline status`: jobs as pipeline trees, from the objects' own status, for one namespace
or all of them.

Listing (`list_jobs`): one LIST per kind and page of `--chunk-size` objects (`limit` and
`continue`, as kubectl pages), never a request per job: 1,000 jobs of the five kinds are five
requests. Everything else is pure: objects in (the dicts the API server returns), text out.

A stage hangs under its last input (an RLHFJob under its reward model, its policy named beside
it), so the usual pipeline reads top to bottom as it runs; with `-A` each namespace is its own
forest, behind a NAMESPACE column, and the totals by state end the table (`--summary` prints only
those, per namespace). The objects are read defensively: an object written by an older operator,
by hand or by another tool may hold anything, and it is shown as well as it can be, never with a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from forgeline.api.chain import JobKey
from forgeline.api.kinds import GROUP, KINDS, STATES, VERSION

Obj = dict[str, Any]
NO_STATE = "Pending"  # no status.state yet: the operator has not looked at the job
ALL_STATES = (*STATES, NO_STATE)
DEFAULT_CHUNK_SIZE = 500  # kubectl's --chunk-size default
_CAUSE_WIDTH = 100


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any, default: str = "") -> str:
    """A field shown as text: strings as they are (one line, bounded), nothing else."""
    if not isinstance(value, str) or not value:
        return default
    return " ".join(value.split())[:200]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _key(obj: Obj) -> JobKey:
    return JobKey(_text(obj.get("kind"), "?"), _text(_mapping(obj.get("metadata")).get("name"), "?"))


def _namespace(obj: Obj) -> str:
    return _text(_mapping(obj.get("metadata")).get("namespace"))


def state_of(obj: Obj) -> str:
    state = _text(_mapping(obj.get("status")).get("state"), NO_STATE)
    return state if state in ALL_STATES else state[:20]


def upstreams(obj: Obj) -> list[JobKey]:
    """The jobs `obj` names as inputs (fromJob, a gate's EvalJob), in api.chain.references_of's
    order, read from the object as stored: no validation, which costs more than the rest of the
    table together at 1,000 jobs, and an object this version cannot parse still finds its place."""
    spec = _mapping(obj.get("spec"))
    if obj.get("kind") == "EvalJob":
        models = spec.get("models")
        sources = [*(models if isinstance(models, list) else []), spec.get("rewardModel")]
    elif obj.get("kind") == "RLHFJob":
        rlhf = _mapping(spec.get("rlhf"))
        sources = [rlhf.get("policy"), rlhf.get("rewardModel")]
    else:
        sources = [spec.get("model")]
    keys = []
    for source in sources:
        ref = _mapping(_mapping(source).get("fromJob"))
        kind, name = _text(ref.get("kind")), _text(ref.get("name"))
        if kind and name:
            keys.append(JobKey(kind, name))
    gate = _text(_mapping(spec.get("gate")).get("evalJob")) if obj.get("kind") != "EvalJob" else ""
    return [*keys, JobKey("EvalJob", gate)] if gate else keys


def age(created: str, now: datetime) -> str:
    """kubectl's AGE: 45s, 5m30s, 3h12m, 2d4h, 400d (a time that does not parse: <unknown>)."""
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
        seconds = int((now - then).total_seconds())
    except (ValueError, TypeError):
        return "<unknown>"
    if seconds < 0:
        return "0s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 2:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d" if days < 365 * 8 else f"{days // 365}y"


# The condition that says why a job is in its state: the one named like the state (Restarting,
# Suspended, Failed: True, with the cause), else these; else the first condition that is False.
_CAUSE_CONDITION = {"Waiting": "InputsReady", "Created": "Running"}


def _cause(status: Obj, state: str) -> str:
    found = status.get("conditions")
    conditions = [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []
    wanted = _CAUSE_CONDITION.get(state, state)
    named = [c for c in conditions if c.get("type") == wanted]
    for c in named + [c for c in conditions if c.get("status") == "False"]:
        reason = _text(c.get("reason"))
        if reason:
            return f"{reason}: {_text(c.get('message'))}"[:_CAUSE_WIDTH]
    return ""


def _columns(obj: Obj, now: datetime) -> list[str]:
    status = _mapping(obj.get("status"))
    state = state_of(obj)
    progress = _text(_mapping(status.get("progress")).get("summary"), "-")
    output = _mapping(status.get("output"))
    where = _text(output.get("uri"))
    digest = _text(output.get("digest")).removeprefix("sha256:")[:12]
    if digest:
        where += f" sha256:{digest}"
    if state not in ("Succeeded", "Running"):
        where = _cause(status, state) or where
    restarts = _count(status.get("restarts"))
    created = _text(_mapping(obj.get("metadata")).get("creationTimestamp"))
    shown_state = state + (f" ({restarts} restarts)" if restarts else "")
    return [shown_state, progress, age(created, now) if created else "-", where]


def _forest(objects: list[Obj]) -> list[tuple[str, Obj]]:
    """One namespace's jobs in tree order: (label with its branch drawing, object)."""
    by_key = {_key(o): o for o in objects}
    parents = {k: upstreams(o) for k, o in by_key.items()}
    created = {k: _text(_mapping(o.get("metadata")).get("creationTimestamp")) for k, o in by_key.items()}
    children: dict[JobKey | None, list[JobKey]] = {}
    for key in sorted(by_key, key=lambda k: (created[k], str(k))):
        known = [p for p in parents[key] if p in by_key and p != key]
        children.setdefault(known[-1] if known else None, []).append(key)
    tree_parent = {kid: p for p, kids in children.items() for kid in kids}
    rows: list[tuple[str, Obj]] = []
    seen: set[JobKey] = set()

    def walk(root: JobKey) -> None:
        # Iterative, not recursive: a chain may be as long as the namespace has jobs.
        stack: list[tuple[JobKey, str, bool, bool]] = [(root, "", True, True)]
        while stack:
            key, prefix, last, is_root = stack.pop()
            if key in seen:
                continue
            seen.add(key)
            branch = "" if is_root else ("└─ " if last else "├─ ")
            label = f"{prefix}{branch}{key}"
            others = list(dict.fromkeys(p for p in parents[key] if p != tree_parent.get(key)))
            if others:  # one named, the rest counted: an EvalJob of many models stays one short line
                label += f" (+ {others[0]}{f', +{len(others) - 1}' if len(others) > 1 else ''})"
            rows.append((label, by_key[key]))
            kids = children.get(key, [])
            below = prefix + ("" if is_root else ("   " if last else "│  "))
            stack.extend((kid, below, i == len(kids) - 1, False) for i, kid in reversed(list(enumerate(kids))))

    for root in children.get(None, []):
        walk(root)
    for key in by_key:  # members of a cycle have no root; show them (and what hangs under them) anyway
        if key not in seen:
            walk(key)
    return rows


_MAX_PAD = 60  # a column is padded to at most this; a longer cell pushes the rest of its own row


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell (up to _MAX_PAD); the last one is not padded."""
    widths = [min(_MAX_PAD, max(len(r[i]) for r in [header, *rows])) for i in range(len(header) - 1)]
    return [
        ("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]).rstrip()
        for row in [header, *rows]
    ]


def _by_namespace(objects: Iterable[Any]) -> dict[str, list[Obj]]:
    groups: dict[str, list[Obj]] = {}
    for obj in objects:
        if isinstance(obj, dict):
            groups.setdefault(_namespace(obj), []).append(obj)
    return dict(sorted(groups.items()))


def totals(objects: Iterable[Obj]) -> str:
    """`N jobs: 3 Running, 1 Failed, ...` in lifecycle order."""
    counts = Counter(state_of(o) for o in objects)
    jobs = sum(counts.values())
    order = [s for s in ALL_STATES if counts[s]] + sorted(s for s in counts if s not in ALL_STATES)
    return f"{jobs} job{'s' if jobs != 1 else ''}: " + ", ".join(f"{counts[s]} {s}" for s in order)


def render_tree(
    objects: list[Any],
    *,
    now: datetime | None = None,
    all_namespaces: bool = False,
    states: Iterable[str] = (),
) -> str:
    """The jobs as trees, one forest per namespace; `states` keeps only jobs in those states (a
    kept job whose parent is not kept becomes a root that names it). With `all_namespaces`, a
    NAMESPACE column and the totals line."""
    now = now or datetime.now(UTC)
    wanted = set(states)
    groups = _by_namespace(objects)
    rows: list[list[str]] = []
    shown: list[Obj] = []
    for namespace, members in groups.items():
        kept = [o for o in members if not wanted or state_of(o) in wanted]
        for label, obj in _forest(kept):
            rows.append([*([namespace or "-"] if all_namespaces else []), label, *_columns(obj, now)])
            shown.append(obj)
    if not rows:
        return "no forgeline jobs" + (" in those states" if wanted and groups else "")
    header = [*(["NAMESPACE"] if all_namespaces else []), "JOB", "STATE", "PROGRESS", "AGE", "OUTPUT / CAUSE"]
    lines = _table(header, rows)
    if all_namespaces:
        lines += ["", totals(shown)]
    return "\n".join(lines)


def render_summary(objects: list[Any]) -> str:
    """Counts by namespace and state, one row per namespace and a TOTAL row."""
    groups = _by_namespace(objects)
    if not groups:
        return "no forgeline jobs"
    everything = [o for members in groups.values() for o in members]
    present = Counter(state_of(o) for o in everything)
    columns = [s for s in ALL_STATES if present[s]] + sorted(s for s in present if s not in ALL_STATES)
    rows = []
    for namespace, members in [*groups.items(), ("TOTAL", everything)]:
        counts = Counter(state_of(o) for o in members)
        rows.append([namespace or "-", str(len(members)), *(str(counts[s]) for s in columns)])
    header = ["NAMESPACE", "JOBS", *(s.upper() for s in columns)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in [header, *rows]
    )


# -- the API server --------------------------------------------------------------------------


@dataclass
class Listing:
    objects: list[Obj] = field(default_factory=list)
    requests: int = 0
    missing: list[str] = field(default_factory=list)  # plurals the server does not serve (404)


def list_jobs(api: Any, namespace: str | None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Listing:
    """Every job of the five kinds in `namespace` (None: all namespaces), `chunk_size` a request.

    `api` is a kubernetes.client.CustomObjectsApi. A continue token that expired between two pages
    (410 Gone: the server compacted past the list's snapshot) restarts that kind's list once, so
    the kind is still read from one snapshot. ApiExceptions other than 404 propagate."""
    from kubernetes.client.exceptions import ApiException

    listing = Listing()
    for cls in KINDS.values():
        items: list[Obj] = []
        token: str | None = None
        restarts = 0
        while True:
            kwargs: dict[str, Any] = {"limit": chunk_size, **({"_continue": token} if token else {})}
            listing.requests += 1
            try:
                if namespace is None:
                    page = api.list_cluster_custom_object(GROUP, VERSION, cls.plural, **kwargs)
                else:
                    page = api.list_namespaced_custom_object(GROUP, VERSION, namespace, cls.plural, **kwargs)
            except ApiException as exc:
                if exc.status == 404:
                    listing.missing.append(cls.plural)
                    break
                if exc.status == 410 and token and restarts == 0:
                    items, token, restarts = [], None, 1
                    continue
                raise
            page = _mapping(page)
            found = page.get("items")
            items.extend(o for o in (found if isinstance(found, list) else []) if isinstance(o, dict))
            token = _text(_mapping(page.get("metadata")).get("continue")) or None
            if token is None:
                break
        listing.objects.extend(items)
    return listing


def context_namespace(kubeconfig: str | None) -> str:
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError):
        return "default"
    return _text(_mapping(_mapping(active).get("context")).get("namespace"), "default")


def run(args: argparse.Namespace) -> int:
    """The `forgeline status` command: list, render, print; one line on stderr for any failure."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    unknown = [s for s in args.state or () if s not in ALL_STATES]
    if unknown:
        print(f"error: --state {unknown[0]!r}: expected one of {', '.join(ALL_STATES)}", file=sys.stderr)
        return 2
    if args.chunk_size < 1:
        print(f"error: --chunk-size {args.chunk_size}: expected a positive number of objects", file=sys.stderr)
        return 2
    try:
        config.load_kube_config(config_file=args.kubeconfig)
    except (config.ConfigException, OSError) as exc:
        print(f"error: cannot load a kubeconfig ({exc}); set KUBECONFIG or pass --kubeconfig", file=sys.stderr)
        return 1
    namespace = None if args.all_namespaces else (args.namespace or context_namespace(args.kubeconfig))
    where = "all namespaces" if namespace is None else namespace
    try:
        listing = list_jobs(client.CustomObjectsApi(), namespace, args.chunk_size)
    except ApiException as exc:
        print(f"error: cannot list forgeline jobs in {where}: {exc.status} {exc.reason}", file=sys.stderr)
        return 1
    except (HTTPError, OSError) as exc:
        print(f"error: cannot reach the API server ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    if len(listing.missing) == len(KINDS):
        print("error: the API server serves no forgeline kinds; are the forgeline CRDs installed?", file=sys.stderr)
        return 1
    for plural in listing.missing:
        print(f"warning: {plural}.{GROUP} is not served (an older CRD set?); listed the other kinds", file=sys.stderr)
    if args.summary:
        print(render_summary(listing.objects))
    else:
        print(render_tree(listing.objects, all_namespaces=namespace is None, states=args.state or ()))
    return 0
