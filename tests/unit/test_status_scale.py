"""`forgeline status` at scale: every namespace, a thousand jobs, filters, totals, paging."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from testbed.builders import FROM_BASE, job_body
from testbed.fleet import fleet, status_for

from forgeline.api.chain import JobKey, references_of
from forgeline.api.kinds import KINDS
from forgeline.api.validate import parse_job
from forgeline.cli.main import main
from forgeline.cli.status import age, context_namespace, list_jobs, render_summary, render_tree, upstreams

NOW = datetime(2026, 1, 2, tzinfo=UTC)
NAMESPACES = ["team-a", "team-b", "research", "prod"]


def jobs(n: int, namespaces: list[str] = NAMESPACES) -> list[dict[str, Any]]:
    out = []
    for i, (body, status) in enumerate(fleet(n, namespaces)):
        body["metadata"]["creationTimestamp"] = f"2026-01-01T00:00:{i % 60:02d}Z"
        out.append({**body, "status": status})
    return out


def lora(name: str, upstream: str, namespace: str = "ns", state: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "forgeline.io/v1alpha1",
        "kind": "LoRAJob",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"model": {"fromJob": {"kind": "LoRAJob", "name": upstream}}, "data": {"synthetic": {}}},
    }
    if state:
        body["status"] = status_for(state, namespace, "LoRAJob", name)
    return body


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (3 * 3600 + 60, "3h1m"), (8 * 3600, "8h"),
     (50 * 3600, "2d2h"), (9 * 86400, "9d"), (800 * 86400, "2y70d"), (-5, "0s")],
)  # fmt: skip
def test_age_reads_like_kubectl(seconds: int, shown: str) -> None:
    created = (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert age(created, NOW) == shown
    assert age("yesterday", NOW) == "<unknown>"


def test_a_thousand_jobs_are_one_row_each_in_aligned_columns_with_totals() -> None:
    text = render_tree(jobs(1000), now=NOW, all_namespaces=True)
    lines = text.splitlines()
    header, rows, totals = lines[0], lines[1:-2], lines[-1]
    assert header.split()[:3] == ["NAMESPACE", "JOB", "STATE"] and lines[-2] == ""
    assert len(rows) == 1000
    for column in ("JOB", "STATE", "PROGRESS", "AGE", "OUTPUT / CAUSE"):
        at = header.index(column)
        assert all(row[at - 2 : at] == "  " and row[at] != " " for row in rows if len(row) > at), column
    assert max(len(row) for row in rows) < 200, "a cause or an output is bounded"
    assert (
        totals
        == "1000 jobs: 33 Created, 398 Waiting, 134 Running, 33 Restarting, 33 Suspended, 336 Succeeded, 33 Failed"
    )
    # The pipeline's shape, once per pipeline: each stage under its last input.
    assert (
        sum(bool(re.search(r"^prod +│  └─ EvalJob/compare-\d+ \(\+ PretrainJob/base-\d+, \+2\)", r)) for r in rows)
        == 50
    )


def test_each_namespace_is_its_own_forest_even_with_the_same_names() -> None:
    objects = [
        lora("a", "none", "ns1", "Succeeded"),
        lora("b", "a", "ns1", "Running"),
        lora("b", "a", "ns2", "Waiting"),
    ]
    lines = render_tree(objects, now=NOW, all_namespaces=True).splitlines()
    assert [line.split()[:2] for line in lines[1:4]] == [["ns1", "LoRAJob/a"], ["ns1", "└─"], ["ns2", "LoRAJob/b"]]
    assert "(+ LoRAJob/a)" not in lines[2] and lines[-1] == "3 jobs: 1 Waiting, 1 Running, 1 Succeeded"


def test_state_filter_keeps_matching_jobs_and_names_the_input_they_hang_on() -> None:
    text = render_tree(jobs(1000), now=NOW, all_namespaces=True, states=["Failed", "Restarting"])
    rows = text.splitlines()[1:-2]
    assert len(rows) == 66 and all(("Failed" in r) != ("Restarting" in r) for r in rows)
    failed = next(r for r in rows if "Failed" in r)
    assert re.match(r"^\w[-\w]* +LoRAJob/tuned-\d+ \(\+ PretrainJob/base-\d+\) ", failed), failed
    assert "BackoffLimitExceeded: attempt 4" in failed
    assert text.splitlines()[-1] == "66 jobs: 33 Restarting, 33 Failed"
    assert render_tree(jobs(10), states=["Suspended"]) == "no forgeline jobs in those states"


def test_summary_counts_jobs_by_namespace_and_state() -> None:
    lines = render_summary(jobs(1000)).splitlines()
    assert lines[0].split() == ["NAMESPACE", "JOBS", "CREATED", "WAITING", "RUNNING", "RESTARTING", "SUSPENDED",
                                "SUCCEEDED", "FAILED"]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["prod", "research", "team-a", "team-b", "TOTAL"]
    assert lines[-1].split() == ["TOTAL", "1000", "33", "398", "134", "33", "33", "336", "33"]
    assert all(sum(map(int, line.split()[2:])) == int(line.split()[1]) for line in lines[1:])
    assert render_summary([]) == "no forgeline jobs"


@pytest.mark.parametrize(
    ("state", "cause"),
    [
        ("Waiting", "WaitingForUpstream: waiting for PretrainJob/base"),
        ("Created", "Unschedulable: 0/16 nodes are available"),
        ("Restarting", "OOMKilled: attempt 2: pod 1 OOMKilled"),  # not Running=False "Restarting"
        ("Suspended", "Suspended: pods deleted"),
        ("Failed", "BackoffLimitExceeded: attempt 4"),
    ],
)
def test_the_cause_is_the_condition_that_explains_the_state(state: str, cause: str) -> None:
    body = lora("x", "none")
    body["status"] = status_for(state, "ns", "LoRAJob", "x", "PretrainJob/base")
    assert cause in render_tree([body], now=NOW).splitlines()[1]


def test_upstreams_read_from_the_raw_object_agree_with_the_api_chain() -> None:
    """One declaration of what an input is (api.chain.references_of); status reads the stored
    object without validating it, so this keeps the two the same for every kind and role."""
    gated = job_body(
        "LoRAJob", "gated", model=FROM_BASE, gate={"evalJob": "compare", "condition": "winRate(a, b) > 0.5"}
    )
    dpo = job_body("RLHFJob", "dpo", rlhf={"policy": FROM_BASE, "algorithm": "dpo"})
    direct = job_body("RLHFJob", "direct")  # uri inputs only
    objects = [body for body, _ in fleet(5, ["ns"])] + [gated, dpo, direct]
    for obj in objects:
        expected = [r.upstream for r in references_of(parse_job(obj)) if r.upstream is not None]
        assert upstreams(obj) == expected, obj["metadata"]["name"]
    assert upstreams(gated)[-1] == JobKey("EvalJob", "compare") and upstreams(direct) == []
    assert upstreams({"kind": "LoRAJob", "spec": {"model": {"fromJob": ["x"]}}}) == []


def test_a_chain_longer_than_the_recursion_limit_renders() -> None:
    chain = [lora(f"j{i:04d}", f"j{i - 1:04d}") for i in range(1200)]
    lines = render_tree(chain, now=NOW).splitlines()
    assert len(lines) == 1201 and lines[-1].lstrip().startswith("└─ LoRAJob/j1199")


def test_members_of_a_cycle_and_what_hangs_under_them_are_shown() -> None:
    objects = [lora("a", "b"), lora("b", "a"), lora("c", "a")]
    text = render_tree(objects, now=NOW)
    assert all(f"LoRAJob/{n}" in text for n in "abc"), text


def test_a_long_label_pushes_only_its_own_row() -> None:
    deep = [lora(f"d{i:02d}", f"d{i - 1:02d}") for i in range(25)]  # each level indents 3 more
    lines = render_tree(deep, now=NOW).splitlines()
    at = lines[0].index("STATE")
    assert at <= 62, "the JOB column is padded to at most 60"
    aligned = [line for line in lines[1:] if line[at - 2 :].startswith("  Pending")]
    assert 10 < len(aligned) < 25, "shallow rows line up; the deepest overflow, each on its own row"
    assert all("  Pending  -" in line for line in lines[1:])


def test_bad_flags_are_refused_before_any_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--state", "Broken", "--kubeconfig", "/nonexistent"]) == 2
    assert "--state 'Broken': expected one of Created, Waiting" in capsys.readouterr().err
    assert main(["status", "-A", "--chunk-size", "0", "--kubeconfig", "/nonexistent"]) == 2
    assert "--chunk-size 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["status", "-A", "-n", "x"])


def test_without_a_namespace_status_reads_the_kubeconfig_context(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: team-a}}, {name: y, context: {cluster: c, user: u}}]
current-context: x
"""
    )
    assert context_namespace(str(kubeconfig)) == "team-a"
    kubeconfig.write_text(kubeconfig.read_text().replace("current-context: x", "current-context: y"))
    assert context_namespace(str(kubeconfig)) == "default"
    assert context_namespace(str(tmp_path / "missing")) == "default"


# -- paging: the server's side of `limit`/`continue`, reduced to what list_jobs relies on -----------


class PagedServer:
    """LIST with limit and continue over fixed items per plural; can expire one continue token
    (410 Gone) or serve no such kind (404)."""

    def __init__(self, per_kind: int, *, expire_once: str = "", missing: str = "") -> None:
        self.items = {cls.plural: [{"kind": k, "metadata": {"name": f"{k.lower()}-{i}"}} for i in range(per_kind)]
                      for k, cls in KINDS.items()}  # fmt: skip
        self.calls: list[tuple[str, int, str]] = []
        self.expire_once, self.missing = expire_once, missing

    def list_cluster_custom_object(self, group: str, version: str, plural: str, *, limit: int, **kw: Any) -> Any:
        token = kw.get("_continue", "")
        self.calls.append((plural, limit, token))
        if plural == self.missing:
            raise ApiException(status=404, reason="Not Found")
        if token and plural == self.expire_once:
            self.expire_once = ""
            raise ApiException(status=410, reason="Gone")
        start = int(token or 0)
        end = start + limit
        rest = str(end) if end < len(self.items[plural]) else ""
        return {"items": self.items[plural][start:end], "metadata": {"continue": rest}}


def test_one_list_per_kind_and_page_never_one_per_job() -> None:
    server = PagedServer(250)
    listing = list_jobs(server, None, chunk_size=100)
    assert len(listing.objects) == 1250 and listing.requests == len(server.calls) == 15
    assert [c for c in server.calls if c[0] == "lorajobs"] == [("lorajobs", 100, ""), ("lorajobs", 100, "100"),
                                                               ("lorajobs", 100, "200")]  # fmt: skip
    assert len({o["metadata"]["name"] for o in listing.objects}) == 1250


def test_an_expired_continue_token_restarts_that_kind_once_and_a_missing_kind_is_noted() -> None:
    server = PagedServer(250, expire_once="rlhfjobs", missing="evaljobs")
    listing = list_jobs(server, None, chunk_size=100)
    assert len(listing.objects) == 1000 and listing.missing == ["evaljobs"]
    rlhf = [c[2] for c in server.calls if c[0] == "rlhfjobs"]
    assert rlhf == ["", "100", "", "100", "200"]
    assert sum(o["kind"] == "RLHFJob" for o in listing.objects) == 250
