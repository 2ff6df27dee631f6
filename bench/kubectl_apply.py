"""Why `kubectl apply` of many jobs is slow, measured on the testbed against Node objects.

Each kubectl command below runs once over one file of N objects, in one run, on a small control
plane (no nodes, no operator: only kubectl and the API server are measured). Per object:

* create: `kubectl apply` of objects that do not exist yet (GET 404, POST), `kubectl create`, and
  `kubectl apply --server-side` (one PATCH each);
* re-apply: `kubectl apply` of the same file again (GET, a three-way patch computed client-side,
  no request when nothing changed), with and without `--openapi-patch=false`, and server-side;
* the API server alone: N POSTs from one Python client, no kubectl.

For the CRDs, three schemas of the five kinds, each under its own API group: ours (crds/), ours
without any x-kubernetes-validations (CEL), and a minimal one (spec and status
x-kubernetes-preserve-unknown-fields). Node objects, created and re-applied the same way, are the
baseline: every figure is printed as a ratio against the Node figure of the same command, with
the size of the OpenAPI v3 document of each group (client-side apply parses it once per existing
object; see docs/operator.md, "Many jobs at once").

With `--operator`, one more row: `kubectl apply` creating N Nodes and then N PretrainJobs while
`forgeline operator` runs and reacts to each new job.

    PYTHONSAFEPATH=1 .venv/bin/python bench/kubectl_apply.py [--objects 100] [--operator]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import client  # noqa: E402
from testbed.kube import apply_crds, wait_for  # noqa: E402
from testbed.launcher import Cluster, ClusterOptions, start_cluster  # noqa: E402
from testbed.operator import OperatorProcess  # noqa: E402

from forgeline.api.crd import crd_for  # noqa: E402
from forgeline.api.kinds import GROUP, KINDS, VERSION  # noqa: E402

Obj = dict[str, Any]
NAMESPACE = "bench"
TINY_MODEL = {"layers": 2, "hiddenSize": 64, "heads": 4, "vocabSize": 512, "contextLength": 64}
VARIANTS = {"ours": GROUP, "no CEL": f"nocel.bench.{GROUP}", "minimal": f"minimal.bench.{GROUP}"}


def _strip_cel(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [_strip_cel(v) for v in node]
    return node


def variant_crd(kind: str, variant: str) -> Obj:
    """Our CRD for `kind` under the variant's group, its schema as the variant says."""
    crd = copy.deepcopy(crd_for(kind))
    group = VARIANTS[variant]
    crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
    crd["spec"]["group"] = group
    crd["spec"]["names"].pop("shortNames", None)
    crd["spec"]["names"].pop("categories", None)
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    if variant == "no CEL":
        version["schema"]["openAPIV3Schema"] = _strip_cel(schema)
    elif variant == "minimal":
        loose = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        version["schema"]["openAPIV3Schema"] = {
            "type": "object",
            "properties": {"spec": dict(loose), "status": dict(loose)},
        }
    return crd


def pretrain(name: str, group: str, seed: int, backoff: int = 3, namespace: str = NAMESPACE) -> Obj:
    """A PretrainJob as a user writes it (the example pipeline's first stage)."""
    return {
        "apiVersion": f"{group}/{VERSION}",
        "kind": "PretrainJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"config": dict(TINY_MODEL)},
            "data": {"synthetic": {"examples": 4000, "seed": seed}},
            "training": {"maxSteps": 300, "batchSize": 8, "learningRate": 3e-3, "checkpointInterval": 100},
            "resources": {"nodes": 2, "procsPerNode": 1, "gpusPerNode": 0},
            "runPolicy": {"backoffLimit": backoff},
        },
    }


def node(name: str, zone: str = "a") -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"bench/zone": zone}}}


def write(path: Path, docs: list[Obj]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def timed(cluster: Cluster, *args: str) -> float:
    began = time.perf_counter()
    cluster.kubectl(*args)
    return time.perf_counter() - began


def post_all(cluster: Cluster, docs: list[Obj]) -> float:
    """N creates from one Python client: the API server's cost per object, no kubectl."""
    api: Any = client.CustomObjectsApi(cluster.client)
    core: Any = client.CoreV1Api(cluster.client)
    began = time.perf_counter()
    for doc in docs:
        if doc["kind"] == "Node":
            core.create_node(doc)
        else:
            group, version = doc["apiVersion"].split("/")
            api.create_namespaced_custom_object(group, version, NAMESPACE, "pretrainjobs", doc)
    return time.perf_counter() - began


def measure(cluster: Cluster, work: Path, n: int) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Seconds per command and variant (`nodes` is the baseline column)."""
    results: dict[str, dict[str, float]] = {}
    sizes: dict[str, int] = {}

    def files(variant: str, prefix: str, **kw: Any) -> Path:
        if variant == "nodes":
            docs = [node(f"{prefix}-{i:04d}", **kw) for i in range(n)]
        else:
            docs = [pretrain(f"{prefix}-{i:04d}", VARIANTS[variant], i, **kw) for i in range(n)]
        return write(work / f"{variant.replace(' ', '-')}-{prefix}-{len(kw)}.yaml", docs)

    for variant in ("nodes", *VARIANTS):
        row = results.setdefault(variant, {})
        a, changed = (
            files(variant, "a"),
            files(variant, "a", **({"zone": "b"} if variant == "nodes" else {"backoff": 5})),
        )
        row["apply: create"] = timed(cluster, "apply", "-f", str(a))
        row["apply: again, unchanged"] = timed(cluster, "apply", "-f", str(a))
        row["apply: again, one field changed"] = timed(cluster, "apply", "-f", str(changed))
        row["apply --openapi-patch=false: changed back"] = timed(
            cluster, "apply", "--openapi-patch=false", "-f", str(a)
        )
        row["create"] = timed(cluster, "create", "-f", str(files(variant, "c")))
        ssa = files(variant, "s")
        row["apply --server-side: create"] = timed(cluster, "apply", "--server-side", "-f", str(ssa))
        row["apply --server-side: again"] = timed(cluster, "apply", "--server-side", "-f", str(ssa))
        p = files(variant, "p")
        row["API server alone: POST"] = post_all(cluster, list(yaml.safe_load_all(p.read_text())))
        path = "/openapi/v3/api/v1" if variant == "nodes" else f"/openapi/v3/apis/{VARIANTS[variant]}/{VERSION}"
        sizes[variant] = len(cluster.kubectl("get", "--raw", path).stdout)
    return results, sizes


def operator_requests(operator: OperatorProcess) -> float:
    """forgeline_operator_api_requests_total, summed over verbs and resources."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in operator.metrics().splitlines()
        if line.startswith("forgeline_operator_api_requests_total{")
    )


def with_operator(cluster: Cluster, work: Path, n: int) -> dict[str, float]:
    """`kubectl apply` creating N objects while `forgeline operator` runs, watching one namespace
    of its own: N Nodes and N PretrainJobs elsewhere (it has nothing to do), then N PretrainJobs
    in its namespace (each makes it render and apply a Job, a Service and a ConfigMap, whose pods
    then wait: the control plane has no nodes), on the same cores as kubectl and the API server."""
    watched = "bench-operator"
    cluster.kubectl("create", "namespace", watched)
    operator = OperatorProcess(["--namespace", watched, "--store", "s3://bench"], cluster.env(), work)
    operator.start()
    try:
        nodes = write(work / "op-nodes.yaml", [node(f"op-{i:04d}") for i in range(n)])
        elsewhere = write(work / "op-elsewhere.yaml", [pretrain(f"op-{i:04d}", GROUP, i) for i in range(n)])
        mine = write(work / "op-mine.yaml", [pretrain(f"op-{i:04d}", GROUP, i, namespace=watched) for i in range(n)])
        out = {"nodes": timed(cluster, "apply", "-f", str(nodes))}
        out["elsewhere"] = timed(cluster, "apply", "-f", str(elsewhere))
        before = operator_requests(operator)
        out["watched"] = timed(cluster, "apply", "-f", str(mine))
        out["requests"] = operator_requests(operator) - before
        return out
    finally:
        operator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100, help="objects per file (default 100)")
    parser.add_argument("--operator", action="store_true", help="also: apply: create with the operator running")
    args = parser.parse_args(argv)
    opts = ClusterOptions(gpu_nodes=0, process_node=False, gang_scheduling=False)
    with start_cluster(opts) as cluster, tempfile.TemporaryDirectory(prefix="forgeline-apply-") as tmp:
        work = Path(tmp)
        apply_crds(cluster, REPO / "crds")
        variants = work / "variants"
        variants.mkdir()
        for variant in VARIANTS:
            if variant != "ours":
                for kind in KINDS:
                    write(variants / f"{variant.replace(' ', '-')}-{kind}.yaml", [variant_crd(kind, variant)])
        # Not apply_crds: `kubectl explain` (its readiness check) has nothing to say about the minimal schema.
        cluster.kubectl("apply", "--server-side", "-f", str(variants))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        for group in VARIANTS.values():
            wait_for(
                lambda g=group: cluster.kubectl("get", f"pretrainjobs.{g}", "-A", check=False).returncode == 0,
                timeout=60,
                what=f"pretrainjobs.{group} served",
            )
        cluster.kubectl("create", "namespace", NAMESPACE)
        load = os.getloadavg()
        results, sizes = measure(cluster, work, args.objects)
        operated = with_operator(cluster, work, args.objects) if args.operator else {}
        after = os.getloadavg()
    n = args.objects
    print(f"{n} objects per command; load average (1/5/15 min) before {load}, after {after}")
    print("OpenAPI v3 document of the group: " + ", ".join(f"{v} {s / 1024:.0f} KiB" for v, s in sizes.items()))
    columns = ["nodes", *VARIANTS]
    print(
        f"{'ms per object':36}"
        + "".join(f"{c:>10}" for c in columns)
        + "".join(f"{c + '/nodes':>16}" for c in columns[1:])
    )
    for command in results["nodes"]:
        ms = [results[c][command] / n * 1000 for c in columns]
        print(f"{command:36}" + "".join(f"{m:>10.1f}" for m in ms) + "".join(f"{m / ms[0]:>16.2f}" for m in ms[1:]))
    if operated:
        ms = {k: operated[k] / n * 1000 for k in ("nodes", "elsewhere", "watched")}
        print("apply: create, the operator running (ms per object; ratio against Nodes in the same phase):")
        print(
            f"  Nodes {ms['nodes']:.1f}; PretrainJobs it does not watch {ms['elsewhere']:.1f} "
            f"({ms['elsewhere'] / ms['nodes']:.2f}); PretrainJobs it reconciles {ms['watched']:.1f} "
            f"({ms['watched'] / ms['nodes']:.2f}), while it sent {operated['requests'] / n:.1f} requests per job"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
