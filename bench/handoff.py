"""Stage hand-off latency against the operator's own reconcile time, in one run on the testbed.

A hand-off is the time from an upstream job's Succeeded to its downstream job's first attempt
created. It is driven by watch events: the upstream's status change reaches the controller, whose
upstream -> downstream index requeues every job that names it, at once (controller.py). So the
floor for a hand-off is about one reconcile pass of the downstream job (read it, read its
upstreams, write status, apply three objects) plus one watch delivery; this prints the ratio.

For each round: K downstream LoRAJobs naming one PretrainJob are created first (they wait), then
the PretrainJob, which kwok's fake nodes run to Succeeded in about a second. Measured, in one run:

* the operator's histogram forgeline_operator_stage_handoff_seconds (the upstream's
  completionTime, recorded to the microsecond, to the downstream's first attempt applied);
* a client-side clock: a watch sees the upstream Succeeded, another watch sees the downstream's
  batch Job appear (includes one more watch delivery to the client);
* the operator's forgeline_operator_reconcile_duration_seconds over the same rounds (every pass,
  of every kind): the baseline.

    PYTHONSAFEPATH=1 .venv/bin/python bench/handoff.py [--rounds 10] [--fanout 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import client, watch  # noqa: E402
from testbed import procs  # noqa: E402
from testbed.kube import OUTCOME_LABEL, apply_crds, new_namespace, wait_for  # noqa: E402
from testbed.launcher import ClusterOptions, start_cluster  # noqa: E402

GROUP, VERSION = "forgeline.io", "v1alpha1"
PLACEMENT = {"nodeSelector": {"type": "kwok"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}


def upstream(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PretrainJob",
        "metadata": {"name": name},  # no outcome label: kwok runs the pods to Succeeded
        "spec": {
            "model": {"config": {"layers": 2, "hiddenSize": 64, "heads": 4, "vocabSize": 512, "contextLength": 64}},
            "data": {"synthetic": {}},
            "resources": {"nodes": 2, "gpusPerNode": 0, **PLACEMENT},
        },
    }


def downstream(name: str, source: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoRAJob",
        "metadata": {"name": name, "labels": {OUTCOME_LABEL: "hang"}},
        "spec": {
            "model": {"fromJob": {"kind": "PretrainJob", "name": source}},
            "data": {"synthetic": {}},
            "resources": {"nodes": 2, "gpusPerNode": 0, **PLACEMENT},
        },
    }


class Clock:
    """Client-side sightings: when each PretrainJob was first seen Succeeded, each batch Job created."""

    def __init__(self, api: client.ApiClient, ns: str) -> None:
        self.succeeded: dict[str, float] = {}
        self.created: dict[str, float] = {}
        self._stop = threading.Event()
        custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
        jobs = (custom.list_namespaced_custom_object, GROUP, VERSION, ns, "pretrainjobs")
        self._threads = [
            threading.Thread(target=self._watch, args=(jobs, self._on_job), daemon=True),
            threading.Thread(target=self._watch, args=((batch.list_namespaced_job, ns), self._on_batch), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _watch(self, call: tuple[Any, ...], on: Any) -> None:
        w = watch.Watch()
        while not self._stop.is_set():
            try:
                for event in w.stream(*call, timeout_seconds=30):
                    on(event["object"])
                    if self._stop.is_set():
                        return
            except Exception as exc:  # a broken watch: start again (sightings keep their first time)
                if not self._stop.is_set():
                    print(f"watch: {exc!r}; resuming", file=sys.stderr)

    def _on_job(self, obj: dict[str, Any]) -> None:
        if (obj.get("status") or {}).get("state") == "Succeeded":
            self.succeeded.setdefault(obj["metadata"]["name"], time.perf_counter())

    def _on_batch(self, obj: Any) -> None:
        self.created.setdefault(obj.metadata.labels.get("forgeline.io/job", ""), time.perf_counter())

    def stop(self) -> None:
        self._stop.set()


def histogram(text: str, name: str, kind: str = "") -> tuple[float, float]:
    """(sum, count) of one histogram over all its labels (or one kind's)."""
    total = count = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}_(sum|count)\{{.*{kind}.*\}} (\S+)$", line)
        if match:
            if match.group(1) == "sum":
                total += float(match.group(2))
            else:
                count += float(match.group(2))
    return total, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--fanout", type=int, default=3, help="downstream jobs per upstream")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="forgeline-bench-handoff-"))
    with start_cluster(ClusterOptions(gpu_nodes=2, process_node=False, workdir=workdir / "cluster")) as cluster:
        apply_crds(cluster, REPO / "crds")
        api = cluster.api_client()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        port = procs.free_port()
        argv_op = [
            str(Path(sys.executable).with_name("forgeline")), "operator", f"--metrics-port={port}",
            "--metrics-addr=127.0.0.1", "--liveness=", "--trainer-metrics-port=0",
            "--store=file:///tmp/forgeline-bench-store", "--resync-seconds=600",
        ]  # fmt: skip
        env = {**cluster.env(), "PYTHONSAFEPATH": "1"}
        operator = procs.spawn("forgeline-operator", argv_op, log_path=workdir / "operator.log", env=env)

        def metrics() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        try:
            procs.wait_until(metrics, timeout=60, what="the operator's /metrics", proc=operator)
            ns = new_namespace(core, "handoff")
            clock = Clock(api, ns)

            def create(body: dict[str, Any]) -> None:
                plural = {"PretrainJob": "pretrainjobs", "LoRAJob": "lorajobs"}[body["kind"]]
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body)

            def state(name: str) -> str | None:
                body = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "lorajobs", name)
                return (body.get("status") or {}).get("state")

            def run_round(tag: str) -> None:
                names = [f"{tag}-down-{i}" for i in range(args.fanout)]
                for name in names:
                    create(downstream(name, f"{tag}-up"))
                wait_for(
                    lambda: all(state(n) == "Waiting" for n in names),
                    timeout=60,
                    what=f"{tag}'s downstream jobs Waiting",
                )
                create(upstream(f"{tag}-up"))
                wait_for(lambda: all(n in clock.created for n in names), timeout=120, what=f"{tag} hand-offs")

            run_round("warmup")  # discovery, watches, first imports
            before = metrics()
            for r in range(args.rounds):
                run_round(f"r{r}")
            after = metrics()
            clock.stop()

            def mean(name: str, kind: str = "") -> tuple[float, float]:
                (s0, c0), (s1, c1) = histogram(before, name, kind), histogram(after, name, kind)
                return (s1 - s0) / (c1 - c0), c1 - c0

            handoff, handoffs = mean("forgeline_operator_stage_handoff_seconds")
            every_pass, passes = mean("forgeline_operator_reconcile_duration_seconds")
            lora_pass, lora_passes = mean("forgeline_operator_reconcile_duration_seconds", 'kind="LoRAJob"')
            client_side = [
                clock.created[f"r{r}-down-{i}"] - clock.succeeded[f"r{r}-up"]
                for r in range(args.rounds)
                for i in range(args.fanout)
            ]
            ms = 1000.0
            print(f"{args.rounds} rounds x {args.fanout} downstream jobs on kwok nodes ({handoffs:.0f} hand-offs)")
            print(f"reconcile pass, all kinds (metric)  mean {every_pass * ms:7.1f} ms ({passes:.0f} passes)")
            print(f"reconcile pass, LoRAJob (metric)    mean {lora_pass * ms:7.1f} ms ({lora_passes:.0f} passes)")
            print(f"hand-off (operator metric)         mean {handoff * ms:7.1f} ms")
            print(
                f"hand-off (client watches)          mean {statistics.mean(client_side) * ms:7.1f} ms, "
                f"p50 {statistics.median(client_side) * ms:.1f} ms, max {max(client_side) * ms:.1f} ms"
            )
            print(f"ratio hand-off / LoRAJob pass      {handoff / lora_pass:7.2f}")
            print(f"ratio hand-off / pass (all kinds)  {handoff / every_pass:7.2f}")
            print(f"every hand-off under 1 s           {max(client_side) < 1.0}")
        finally:
            operator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
