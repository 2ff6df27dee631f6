"""`forgeline status -A` and `kubectl get llmjobs -A` with many jobs, against each other.

A small control plane (no nodes, no operator) holds `--jobs` jobs: copies of the example
pipeline over four namespaces, each with a status written through the status subresource as the
operator writes it (testbed/fleet.py). Timed, each `--repeats` times (median): `kubectl get
llmjobs -A` (the baseline), `forgeline status -A`, `forgeline status -A --summary`, `forgeline
status -n <one namespace>`, and `forgeline --help` (the interpreter's start, the floor of any
forgeline command). Printed: seconds, the ratio against kubectl, the LIST requests one listing
takes (counted at the HTTP client), and the first lines of both tables.

    PYTHONSAFEPATH=1 .venv/bin/python bench/status_scale.py [--jobs 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import client  # noqa: E402
from testbed.fleet import seed  # noqa: E402
from testbed.kube import apply_crds  # noqa: E402
from testbed.launcher import ClusterOptions, start_cluster  # noqa: E402

from forgeline.cli.status import list_jobs  # noqa: E402

NAMESPACES = ["team-a", "team-b", "research", "prod"]
FORGELINE = REPO / ".venv" / "bin" / "forgeline"


class CountingClient(client.ApiClient):  # type: ignore[misc]
    """The real client, counting the HTTP requests it sends."""

    requests: list[str]

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        self.requests.append(f"{method} {url.split('://', 1)[-1].split('/', 1)[-1]}")
        return super().call_api(method, url, *args, **kwargs)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - began, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    opts = ClusterOptions(gpu_nodes=0, process_node=False, gang_scheduling=False)
    with start_cluster(opts) as cluster:
        apply_crds(cluster, REPO / "crds")
        core: Any = client.CoreV1Api(cluster.client)
        for ns in NAMESPACES:
            core.create_namespace({"metadata": {"name": ns}})
        began = time.perf_counter()
        seed(client.CustomObjectsApi(cluster.client), args.jobs, NAMESPACES)
        seeded = time.perf_counter() - began
        env = cluster.env()
        kubectl = str(cluster.bin_dir / "kubectl")
        commands = {
            "kubectl get llmjobs -A": [kubectl, "get", "llmjobs", "-A"],
            "forgeline status -A": [str(FORGELINE), "status", "-A"],
            "forgeline status -A --summary": [str(FORGELINE), "status", "-A", "--summary"],
            f"forgeline status -n {NAMESPACES[0]}": [str(FORGELINE), "status", "-n", NAMESPACES[0]],
            "forgeline --help": [str(FORGELINE), "--help"],
        }
        timed(commands["kubectl get llmjobs -A"], env)  # kubectl's discovery cache, once
        times: dict[str, list[float]] = {name: [] for name in commands}
        outputs: dict[str, str] = {}
        load = os.getloadavg()
        for _ in range(args.repeats):  # interleaved, so load changes hit every command alike
            for name, command in commands.items():
                seconds, outputs[name] = timed(command, env)
                times[name].append(seconds)
        counting = CountingClient(cluster.client.configuration)
        counting.requests = []
        began = time.perf_counter()
        listing = list_jobs(client.CustomObjectsApi(counting), None)
        listed = time.perf_counter() - began
        after = os.getloadavg()
    base = statistics.median(times["kubectl get llmjobs -A"])
    print(f"{args.jobs} jobs in {len(NAMESPACES)} namespaces (seeded in {seeded:.1f}s); medians of {args.repeats}")
    print(f"load average (1/5/15 min) before {load}, after {after}")
    print(f"{'command':40}{'seconds':>9}{'/ kubectl':>11}  runs")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"{name:40}{median:>9.2f}{median / base:>11.2f}  {' '.join(f'{r:.2f}' for r in runs)}")
    print(f"list_jobs(all namespaces): {len(listing.objects)} jobs, {len(counting.requests)} requests, {listed:.2f}s")
    for line in counting.requests:
        print(f"  {line}")
    for name in ("kubectl get llmjobs -A", "forgeline status -A"):
        lines = outputs[name].splitlines()
        print(f"\n{name}: {len(lines)} lines, widest {max(map(len, lines))} characters; first and last lines:")
        print("\n".join([*lines[:8], "...", *lines[-3:]]))
    print(f"\nforgeline status -A --summary:\n{outputs['forgeline status -A --summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
