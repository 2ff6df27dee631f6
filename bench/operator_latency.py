"""Operator latency against its floor, in one run on the testbed control plane.

For an N-node job (N = 8 and 32 by default) it measures the time from the create call to (a) all
N pods created and (b) all N pods Running, on three paths, interleaved (each repeat runs the three
in a rotated order, so drift in the machine's load falls on all of them alike):

* `floor`: the children the operator renders for that job, created directly with the client: the
  PodGroup when the cluster serves PodGroups (gang placement) and the Indexed batch Job
  (render_job's output, minus the owner). The Job controller, scheduler and kwok, no operator;
* `plain`: the same batch Job without a PodGroup (what gang placement itself costs);
* `operator`: a PretrainJob applied, reconciled by `forgeline operator` (a subprocess), which
  writes status first (with the attempt's ConfigMap, Service and PodGroup), then creates its Job.

`--no-gang` starts the control plane without the PodGroup API: the floor is then the plain Job,
the figure a peer operator that places pods one by one is measured against.

It prints the medians, the ratio operator/floor, the operator's API requests per job (its
`forgeline_operator_api_requests_total`), the load average, and the operator's RSS idle and
after 200 one-node jobs reached Running. kwok nodes play the pods, so this measures the control
path, not container start-up.

    PYTHONSAFEPATH=1 .venv/bin/python bench/operator_latency.py [--sizes 8 32] [--repeats 5] [--jobs 200] [--no-gang]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import client, watch  # noqa: E402
from testbed import procs  # noqa: E402
from testbed.kube import OUTCOME_LABEL, apply_crds, new_namespace, wait_for  # noqa: E402
from testbed.launcher import ClusterOptions, start_cluster  # noqa: E402

from forgeline.api.validate import parse_job  # noqa: E402
from forgeline.operator.client import KubeClient  # noqa: E402
from forgeline.operator.render import LABEL_JOB, Owner, RenderSettings, render_job, render_pod_group  # noqa: E402

PLACEMENT = {"nodeSelector": {"type": "kwok"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
PODGROUPS = ("scheduling.k8s.io", "v1alpha2", "podgroups")
FLOOR_LABEL = "bench.forgeline.io/job"  # the floor's children carry this instead of forgeline.io/job


def manifest(name: str, nodes: int) -> dict[str, Any]:
    return {
        "apiVersion": "forgeline.io/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": name, "labels": {OUTCOME_LABEL: "hang"}},
        "spec": {
            "model": {"config": {"layers": 2, "hiddenSize": 64, "heads": 4, "vocabSize": 512, "contextLength": 64}},
            "data": {"synthetic": {}},
            "resources": {"nodes": nodes, "gpusPerNode": 0, **PLACEMENT},
        },
    }


class PodClock:
    """Watches pods with one label value and records when N exist and when N are Running."""

    def __init__(self, core: client.CoreV1Api, ns: str, selector: str, n: int) -> None:
        self.core, self.ns, self.selector, self.n = core, ns, selector, n
        self.created_at: float | None = None
        self.running_at: float | None = None
        self._seen: dict[str, str] = {}
        self._done = threading.Event()
        self._watching = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._watching.wait(30)  # the clock starts only once the watch is open

    def _run(self) -> None:
        # List, then watch from the list's version; a watch that ends or breaks is resumed the
        # same way, so no pod is missed (observation times are those of the first sighting).
        while not self._done.is_set():
            try:
                listing = self.core.list_namespaced_pod(self.ns, label_selector=self.selector)
                for pod in listing.items:
                    self._observe("ADDED", pod)
                self._watching.set()
                stream = self._watch.stream(
                    self.core.list_namespaced_pod,
                    self.ns,
                    label_selector=self.selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=60,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    self._observe(event["type"], event["object"])
                    if self._done.is_set():
                        self._watch.stop()
                        return
            except Exception as exc:  # a broken watch: list again and resume
                print(f"watch {self.selector}: {exc!r}; resuming", file=sys.stderr)

    def _observe(self, kind: str, pod: Any) -> None:
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self._seen.pop(pod.metadata.name, None)
            return
        self._seen[pod.metadata.name] = pod.status.phase
        now = time.perf_counter()
        if self.created_at is None and len(self._seen) >= self.n:
            self.created_at = now
        if self.running_at is None and sum(p == "Running" for p in self._seen.values()) >= self.n:
            self.running_at = now
            self._done.set()

    def wait(self, t0: float, timeout: float = 300) -> tuple[float, float]:
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.selector}: {len(self._seen)} pods seen, not all Running after {timeout}s")
        assert self.created_at is not None and self.running_at is not None
        return self.created_at - t0, self.running_at - t0


class JobClock:
    """Watches batch Jobs with one label value and records when the first one appears."""

    def __init__(self, batch: client.BatchV1Api, ns: str, selector: str) -> None:
        self.seen_at: float | None = None
        self._watch = watch.Watch()
        listing = batch.list_namespaced_job(ns, label_selector=selector)
        version = listing.metadata.resource_version
        kwargs = {"label_selector": selector, "resource_version": version, "timeout_seconds": 60}
        self._stream = self._watch.stream(batch.list_namespaced_job, ns, **kwargs)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                if event["type"] == "ADDED":
                    self.seen_at = time.perf_counter()
                    break
        except Exception as exc:
            print(f"job watch: {exc!r}", file=sys.stderr)
        self._watch.stop()

    def since(self, t0: float) -> float:
        self._thread.join(30)
        return float("nan") if self.seen_at is None else self.seen_at - t0


class Bench:
    def __init__(self, api: Any, ns: str, gang: bool) -> None:
        self.core, self.batch = client.CoreV1Api(api), client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.ns, self.gang = ns, gang

    def direct(self, name: str, nodes: int, *, gang: bool) -> tuple[float, float, float]:
        """What the operator creates for this job's first attempt, created by hand (no owner: the
        garbage collector would delete it): the PodGroup (gang) and the Job."""
        body = {**manifest(name, nodes), "metadata": {"name": name, "namespace": self.ns, **_labels()}}
        job, owner = parse_job(body), Owner("direct", labels={OUTCOME_LABEL: "hang"})
        objs = [render_pod_group(job, owner, 1)] if gang else []
        objs.append(render_job(job, owner, 1, RenderSettings(gang_scheduling=gang)))
        for obj in objs:
            obj["metadata"].pop("ownerReferences")
            # Out of the operator's sight: its watches select forgeline.io/job, and a floor whose
            # pods it had to process (and pass over) would be slowed by the operator too.
            for meta in (obj["metadata"], obj["spec"].get("template", {}).get("metadata", {})):
                if LABEL_JOB in meta.get("labels", {}):
                    meta["labels"][FLOOR_LABEL] = meta["labels"].pop(LABEL_JOB)
        clock = PodClock(self.core, self.ns, f"{FLOOR_LABEL}={name}", nodes)
        t0 = time.perf_counter()
        for obj in objs:
            if obj["kind"] == "PodGroup":
                self.custom.create_namespaced_custom_object(*PODGROUPS[:2], self.ns, PODGROUPS[2], obj)
            else:
                self.batch.create_namespaced_job(self.ns, obj)
                job_at = time.perf_counter() - t0
        return (job_at, *clock.wait(t0))

    def via_operator(self, name: str, nodes: int) -> tuple[float, float, float]:
        """(the batch Job exists, all pods exist, all Running), each from the create call."""
        clock = PodClock(self.core, self.ns, f"forgeline.io/job={name}", nodes)
        job_clock = JobClock(self.batch, self.ns, f"forgeline.io/job={name}")
        t0 = time.perf_counter()
        self.custom.create_namespaced_custom_object("forgeline.io", "v1alpha1", self.ns, "pretrainjobs",
                                                    manifest(name, nodes))  # fmt: skip
        created, running = clock.wait(t0)
        return job_clock.since(t0), created, running

    def clean(self) -> None:
        self.custom.delete_collection_namespaced_custom_object("forgeline.io", "v1alpha1", self.ns, "pretrainjobs")
        self.batch.delete_collection_namespaced_job(self.ns, propagation_policy="Background")
        if self.gang:
            self.custom.delete_collection_namespaced_custom_object(*PODGROUPS[:2], self.ns, PODGROUPS[2])
        wait_for(lambda: not self.core.list_namespaced_pod(self.ns).items, timeout=120, what="pods gone", interval=0.1)


def _labels() -> dict[str, Any]:
    return {"labels": {OUTCOME_LABEL: "hang"}}


def rss_mib(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return float(proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))) / 2**20


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def api_requests(metrics_port: int) -> dict[tuple[str, str], float]:
    """The operator's own count of its API requests, by (verb, resource)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    counts = {}
    for labels, value in re.findall(r"^forgeline_operator_api_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        named = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        counts[(named["verb"], named["resource"])] = float(value)
    return counts


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=200, help="one-node jobs for the memory figure (0: skip)")
    parser.add_argument("--operator-arg", action="append", default=[], help="an extra flag for the operator")
    parser.add_argument(
        "--no-gang", action="store_true", help="a cluster without the PodGroup API (floor = plain Job, as for a peer)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(n < 1 for n in args.sizes):
        parser.error("--repeats and --sizes must be positive")
    workdir = Path(tempfile.mkdtemp(prefix="forgeline-bench-"))
    opts = ClusterOptions(
        gpu_nodes=4, process_node=False, workdir=workdir / "cluster", gang_scheduling=not args.no_gang
    )
    with start_cluster(opts) as cluster:
        apply_crds(cluster, REPO / "crds")
        api = cluster.api_client()
        gang = KubeClient(api).serves_pod_groups()
        metrics_port = procs.free_port()
        argv_op = [
            str(Path(sys.executable).with_name("forgeline")), "operator", f"--metrics-port={metrics_port}",
            "--metrics-addr=127.0.0.1", "--liveness=", "--trainer-metrics-port=0",
            "--store=file:///tmp/forgeline-bench-store", *args.operator_arg,
        ]  # fmt: skip
        env = {**cluster.env(), "PYTHONSAFEPATH": "1"}
        operator = procs.spawn("forgeline-operator", argv_op, log_path=workdir / "operator.log", env=env)
        print(f"operator pid {operator.pid}, log {workdir / 'operator.log'}; gang placement {'on' if gang else 'off'}")
        try:
            ns = new_namespace(client.CoreV1Api(api), "bench")
            bench = Bench(api, ns, gang)
            # Warm-up: the first job pays for discovery and the operator's watches starting.
            wait_for(lambda: api_requests(metrics_port) is not None, timeout=60, what="the operator's metrics")
            bench.via_operator("warmup", 1)
            bench.direct("warmup-direct", 1, gang=gang)
            bench.clean()
            idle_rss = rss_mib(operator.pid)
            paths: dict[str, Callable[[str, int], tuple[float, float, float]]] = {
                "floor": lambda name, n: bench.direct(name, n, gang=gang),
                "plain": lambda name, n: bench.direct(name, n, gang=False),
                "operator": bench.via_operator,
            }
            results: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
            requests: dict[int, list[float]] = {}
            cpu_used: dict[int, list[float]] = {}
            loads = [load()]
            for r in range(args.repeats):
                for n in args.sizes:
                    order = list(paths)
                    order = order[r % len(order) :] + order[: r % len(order)]
                    for path in order:
                        before, cpu = sum(api_requests(metrics_port).values()), cpu_seconds(operator.pid)
                        results.setdefault((n, path), []).append(paths[path](f"{path}-{n}-{r}", n))
                        if path == "operator":  # its requests and CPU time up to all pods Running
                            requests.setdefault(n, []).append(sum(api_requests(metrics_port).values()) - before)
                            cpu_used.setdefault(n, []).append(cpu_seconds(operator.pid) - cpu)
                        bench.clean()
                loads.append(load())
            print(f"\nmedians of {args.repeats} interleaved runs; load average (1/5/15 min) at each repeat: "
                  + "; ".join(loads))  # fmt: skip
            print(f"{'N':>4} {'path':<9} {'Job exists (s)':>15} {'pods created (s)':>17} {'all Running (s)':>16}"
                  f"  each run's all Running (s)")  # fmt: skip
            for n in args.sizes:
                med = {}
                for path in paths:
                    runs = results[(n, path)]
                    med[path] = tuple(statistics.median(x[i] for x in runs) for i in (0, 1, 2))
                    each = " ".join(f"{x[2]:.2f}" for x in runs)
                    m = med[path]
                    print(f"{n:>4} {path:<9} {m[0]:>15.3f} {m[1]:>17.3f} {m[2]:>16.3f}  {each}")
                for base in ("floor", "plain"):
                    ratio = [med["operator"][i] / med[base][i] for i in (1, 2)]
                    print(f"{n:>4} {'op/' + base:<9} {'':>15} {ratio[0]:>17.2f} {ratio[1]:>16.2f}")
                print(f"{n:>4} operator, per job up to all Running: {statistics.median(requests[n]):.0f} API requests, "
                      f"{statistics.median(cpu_used[n]):.2f} CPU-seconds")  # fmt: skip
            if args.jobs:
                names = [f"mem-{i:03d}" for i in range(args.jobs)]
                t0 = time.perf_counter()
                for name in names:
                    bench.custom.create_namespaced_custom_object("forgeline.io", "v1alpha1", ns, "pretrainjobs",
                                                                 manifest(name, 1))  # fmt: skip

                def running() -> bool:
                    items = bench.custom.list_namespaced_custom_object("forgeline.io", "v1alpha1", ns, "pretrainjobs")
                    return sum((o.get("status") or {}).get("state") == "Running" for o in items["items"]) == len(names)

                wait_for(running, timeout=600, what=f"{args.jobs} jobs Running", interval=0.5)
                took = time.perf_counter() - t0
                busy_rss = rss_mib(operator.pid)
                print(f"operator RSS: {idle_rss:.0f} MiB idle, {busy_rss:.0f} MiB with {args.jobs} jobs Running "
                      f"({took:.1f}s after the first create; load {load()})")  # fmt: skip
        finally:
            operator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
