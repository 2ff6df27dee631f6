"""Hundreds of jobs on the real API server: `forgeline status -A` lists every one, one LIST per
kind and page, and `kubectl get llmjobs` prints the state's reason from the conditions.

No operator: the statuses are written through the status subresource as the operator writes
them (testbed/fleet.py)."""

from __future__ import annotations

import math
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from kubernetes import client
from testbed.fleet import seed
from testbed.kube import apply_crds, new_namespace

from forgeline.api.kinds import GROUP, KINDS, VERSION
from forgeline.cli.status import list_jobs

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
FORGELINE = REPO / ".venv" / "bin" / "forgeline"
JOBS = 250
CHUNK = 40


class CountingClient(client.ApiClient):  # type: ignore[misc]
    """The real client, recording each HTTP request it sends: (method, path, query)."""

    def __init__(self, configuration: Any) -> None:
        super().__init__(configuration)
        self.sent: list[tuple[str, str, dict[str, str]]] = []

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        self.sent.append((method, parts.path, dict(parse_qsl(parts.query))))
        return super().call_api(method, url, *args, **kwargs)


@pytest.fixture(scope="module")
def fleet(cluster: Any) -> tuple[list[str], list[dict[str, Any]]]:
    apply_crds(cluster, REPO / "crds")
    core = client.CoreV1Api(cluster.client)
    namespaces = [new_namespace(core, "fleet") for _ in range(2)]
    return namespaces, seed(client.CustomObjectsApi(cluster.client), JOBS, namespaces)


def test_status_lists_every_job_with_one_request_per_kind_and_page(cluster: Any, fleet: Any) -> None:
    _, jobs = fleet
    counting = CountingClient(cluster.client.configuration)
    listing = list_jobs(client.CustomObjectsApi(counting), None, chunk_size=CHUNK)
    per_kind = Counter(o["kind"] for o in listing.objects)  # other tests' jobs are listed too
    pages = sum(max(1, math.ceil(per_kind[kind] / CHUNK)) for kind in KINDS)
    assert len(counting.sent) == listing.requests == pages
    assert all(method == "GET" and f"/apis/{GROUP}/{VERSION}/" in url for method, url, _ in counting.sent)
    assert all(q["limit"] == str(CHUNK) for _, _, q in counting.sent)
    assert sum("continue" in q for _, _, q in counting.sent) == pages - len(KINDS)
    ours = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in listing.objects}
    assert {(j["metadata"]["namespace"], j["metadata"]["name"]) for j in jobs} <= ours


def test_status_all_namespaces_shows_each_job_once_with_its_state_and_totals(cluster: Any, fleet: Any) -> None:
    namespaces, jobs = fleet
    out = subprocess.run(
        [str(FORGELINE), "status", "-A", "--chunk-size", str(CHUNK)],
        env=cluster.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "JOB", "STATE"] and re.match(r"^\d+ jobs: ", lines[-1])
    for job in jobs:
        meta, state = job["metadata"], job["status"]["state"]
        own = re.compile(rf"^{meta['namespace']} +[│├└─ ]*{job['kind']}/{meta['name']} ")  # its row, not a (+ ...)
        rows = [line for line in lines if own.match(line)]
        assert len(rows) == 1 and f"  {state}" in rows[0], (job["kind"], meta, rows)
    summary = subprocess.run(
        [str(FORGELINE), "status", "-n", namespaces[0], "--summary"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    first = Counter(j["status"]["state"] for j in jobs if j["metadata"]["namespace"] == namespaces[0])
    assert summary[-1].split()[:2] == ["TOTAL", str(sum(first.values()))], summary
    by_state = dict(zip(summary[0].split()[2:], summary[-1].split()[2:], strict=True))
    assert by_state == {state.upper(): str(n) for state, n in first.items()}, summary


def tables(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """`kubectl get -A` output (one table per kind, blank lines between) -> (namespace, name) ->
    column -> cell; cells are cut at the header's column starts: an empty cell has no word."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for block in text.strip().split("\n\n"):
        header, *lines = block.splitlines()
        names = header.split()
        starts = [header.index(f"{n} " if i < len(names) - 1 else n) for i, n in enumerate(names)]
        for line in lines:
            ends = [*starts[1:], None]
            cells = {n: line[a:b].strip() for n, a, b in zip(names, starts, ends, strict=True)}
            rows[cells["NAMESPACE"], cells["NAME"]] = cells
    return rows


def test_kubectl_get_llmjobs_prints_the_reason_attempt_and_restarts(cluster: Any, fleet: Any) -> None:
    _, jobs = fleet
    text = cluster.kubectl("get", "llmjobs", "-A").stdout
    assert {tuple(block.splitlines()[0].split()) for block in text.strip().split("\n\n")} == {
        ("NAMESPACE", "NAME", "STATE", "REASON", "ATTEMPT", "RESTARTS", "PROGRESS", "AGE")
    }, "the five kinds print the same columns"
    rows = tables(text)
    reasons = {
        "Waiting": "WaitingForUpstream",
        "Created": "Unschedulable",
        "Running": "",
        "Restarting": "Restarting",
        "Failed": "BackoffLimitExceeded",
        "Suspended": "Suspended",
        "Succeeded": "Succeeded",
    }
    for job in jobs:
        meta, status = job["metadata"], job["status"]
        row = rows[meta["namespace"], f"{job['kind'].lower()}.{GROUP}/{meta['name']}"]
        assert (row["STATE"], row["REASON"]) == (status["state"], reasons[status["state"]]), row
        assert (row["ATTEMPT"], row["RESTARTS"]) == (str(status["attempt"]), str(status.get("restarts", 0))), row
        assert row["PROGRESS"] == status.get("progress", {}).get("summary", ""), row
    assert {j["status"]["state"] for j in jobs} == set(reasons)
    namespace = jobs[0]["metadata"]["namespace"]
    wide = cluster.kubectl("get", "llmjobs", "-n", namespace, "-o", "wide").stdout
    assert "OUTPUT" in wide.splitlines()[0] and f"s3://forgeline/{namespace}/pretrainjob/" in wide
