"""Operator latency against its floor, in one run on the testbed control plane.

For an N-node job (N = 8 and 64) it measures the time from the create call to (a) all N pods
created and (b) all N pods Running, twice:

* the floor: the same Indexed batch Job (render_job's output, minus the owner) created directly
  with the client: the Job controller, scheduler and kwok, with no operator in the way;
* the operator: a PretrainJob applied, reconciled by `forgeline operator` (a subprocess).

It prints both, the ratio operator/floor, and the operator's RSS after 200 one-node jobs reached
Running. kwok nodes play the pods, so this measures the control path, not container start-up.

    PYTHONSAFEPATH=1 .venv/bin/python bench/operator_latency.py [--sizes 8 64] [--repeats 3] [--jobs 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import client, watch  # noqa: E402
from testbed import procs  # noqa: E402
from testbed.kube import OUTCOME_LABEL, apply_crds, new_namespace, wait_for  # noqa: E402
from testbed.launcher import ClusterOptions, start_cluster  # noqa: E402

from forgeline.api.validate import parse_job  # noqa: E402
from forgeline.operator.render import Owner, RenderSettings, render_job  # noqa: E402

PLACEMENT = {"nodeSelector": {"type": "kwok"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}


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
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # List, then watch from the list's version; a watch that ends or breaks is resumed the
        # same way, so no pod is missed (observation times are those of the first sighting).
        while not self._done.is_set():
            try:
                listing = self.core.list_namespaced_pod(self.ns, label_selector=self.selector)
                for pod in listing.items:
                    self._observe("ADDED", pod)
                stream = self._watch.stream(
                    self.core.list_namespaced_pod,
                    self.ns,
                    label_selector=self.selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=60,
                )
                for event in stream:
                    self._observe(event["type"], event["object"])
                    if self._done.is_set():
                        self._watch.stop()
                        return
            except Exception as exc:  # a broken watch: list again and resume
                print(f"watch {self.selector}: {exc!r}; resuming", file=sys.stderr)

    def _observe(self, kind: str, pod: Any) -> None:
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

    def wait(self, timeout: float = 300) -> None:
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.selector}: {len(self._seen)} pods seen, not all Running after {timeout}s")


def direct(core: client.CoreV1Api, batch: client.BatchV1Api, ns: str, name: str, nodes: int) -> tuple[float, float]:
    body = {**manifest(name, nodes), "metadata": {"name": name, "namespace": ns, "labels": {OUTCOME_LABEL: "hang"}}}
    job = render_job(parse_job(body), Owner("direct", labels={OUTCOME_LABEL: "hang"}), 1, RenderSettings())
    job["metadata"].pop("ownerReferences")  # no owner: the garbage collector would delete it
    clock = PodClock(core, ns, f"forgeline.io/job={name}", nodes)
    t0 = time.perf_counter()
    batch.create_namespaced_job(ns, job)
    clock.wait()
    assert clock.created_at is not None and clock.running_at is not None
    return clock.created_at - t0, clock.running_at - t0


def via_operator(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, ns: str, name: str, nodes: int
) -> tuple[float, float]:
    clock = PodClock(core, ns, f"forgeline.io/job={name}", nodes)
    t0 = time.perf_counter()
    custom.create_namespaced_custom_object("forgeline.io", "v1alpha1", ns, "pretrainjobs", manifest(name, nodes))
    clock.wait()
    assert clock.created_at is not None and clock.running_at is not None
    return clock.created_at - t0, clock.running_at - t0


def clean(core: client.CoreV1Api, batch: client.BatchV1Api, custom: client.CustomObjectsApi, ns: str) -> None:
    custom.delete_collection_namespaced_custom_object("forgeline.io", "v1alpha1", ns, "pretrainjobs")
    batch.delete_collection_namespaced_job(ns, propagation_policy="Background")
    wait_for(lambda: not core.list_namespaced_pod(ns).items, timeout=120, what="pods gone", interval=0.2)


def rss_mib(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return float(proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=200, help="one-node jobs for the memory figure (0: skip)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="forgeline-bench-"))
    with start_cluster(ClusterOptions(gpu_nodes=4, process_node=False, workdir=workdir / "cluster")) as cluster:
        apply_crds(cluster, REPO / "crds")
        api = cluster.api_client()
        core, batch, custom = client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)
        argv_op = [
            str(Path(sys.executable).with_name("forgeline")), "operator", "--metrics-port=0", "--liveness=",
            "--trainer-metrics-port=0", "--store=file:///tmp/forgeline-bench-store",
        ]  # fmt: skip
        env = {**cluster.env(), "PYTHONSAFEPATH": "1"}
        operator = procs.spawn("forgeline-operator", argv_op, log_path=workdir / "operator.log", env=env)
        try:
            ns = new_namespace(core, "bench")
            # Warm-up: the first job pays for discovery and the operator's watches starting.
            via_operator(core, custom, ns, "warmup", 1)
            clean(core, batch, custom, ns)
            print(f"{'N':>4} {'path':<9} {'pods created (s)':>17} {'all Running (s)':>16}")
            for n in args.sizes:
                floor: list[tuple[float, float]] = []
                ours: list[tuple[float, float]] = []
                for r in range(args.repeats):
                    floor.append(direct(core, batch, ns, f"direct-{n}-{r}", n))
                    clean(core, batch, custom, ns)
                    ours.append(via_operator(core, custom, ns, f"op-{n}-{r}", n))
                    clean(core, batch, custom, ns)
                f_created, f_running = (statistics.median(x[i] for x in floor) for i in (0, 1))
                o_created, o_running = (statistics.median(x[i] for x in ours) for i in (0, 1))
                print(f"{n:>4} {'direct':<9} {f_created:>17.3f} {f_running:>16.3f}")
                print(f"{n:>4} {'operator':<9} {o_created:>17.3f} {o_running:>16.3f}")
                print(f"{n:>4} {'ratio':<9} {o_created / f_created:>17.2f} {o_running / f_running:>16.2f}")
            if args.jobs:
                before = rss_mib(operator.pid)
                names = [f"mem-{i:03d}" for i in range(args.jobs)]
                t0 = time.perf_counter()
                for name in names:
                    custom.create_namespaced_custom_object(
                        "forgeline.io", "v1alpha1", ns, "pretrainjobs", manifest(name, 1)
                    )

                def running() -> bool:
                    items = custom.list_namespaced_custom_object("forgeline.io", "v1alpha1", ns, "pretrainjobs")[
                        "items"
                    ]
                    return sum((o.get("status") or {}).get("state") == "Running" for o in items) == len(names)

                wait_for(running, timeout=600, what=f"{args.jobs} jobs Running", interval=0.5)
                took = time.perf_counter() - t0
                print(f"operator RSS: {before:.0f} MiB idle, {rss_mib(operator.pid):.0f} MiB with {args.jobs} jobs "
                      f"Running ({args.jobs} jobs Running {took:.1f}s after the first create)")  # fmt: skip
        finally:
            operator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
