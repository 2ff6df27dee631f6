"""Kueue's manager (built from its Go module) as a process next to the test control plane.

Out-of-cluster, as the cluster's admin, with its webhooks unregistered: the API server never
calls it, so defaulting and validation of Kueue's own objects are off and the objects below are
written complete. Its webhook server still listens (controller-runtime starts it once webhooks are
set up), on a free port of 127.0.0.1 with the cluster's serving certificate; the metrics server is
off. What is on is what forgeline meets on a real cluster: the batch/job integration (a Job
labelled `kueue.x-k8s.io/queue-name` is held suspended until admitted), quota in a ClusterQueue,
and waitForPodsReady (an admitted Job whose pods are not all Ready within the timeout is evicted:
suspended again, its pods deleted, requeued).

Set up once per session (`kueue` fixture): the CRDs from the module's
config/components/crd/bases, ResourceFlavor `gpu`, ClusterQueue `gpu` with an nvidia.com/gpu
quota and preemption within the queue (a workload of a higher WorkloadPriorityClass evicts lower
ones to fit), WorkloadPriorityClasses `low` and `high` (a Job picks one with the
`kueue.x-k8s.io/priority-class` label; without one every workload has priority 0 and nothing is
preempted), and `kueue.local_queue(ns)` makes LocalQueue `gpu` in a test's namespace.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import procs
from testbed.kube import apply_crds

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "cluster" / "kueue" / "build.sh"
GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
PRIORITIES = {"low": 100, "high": 1000}  # WorkloadPriorityClass name -> value
NAMESPACE = "kueue-system"  # its leader-election and cert namespace; neither is used here
FLAVOR = "gpu"
CLUSTER_QUEUE = "gpu"
LOCAL_QUEUE = "gpu"


def kueue_dir() -> Path:
    """The directory with `kueue` and `crds/`; builds them on a cold cache (minutes)."""
    res = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed with exit {res.returncode} (its log is on stderr above)")
    return Path(res.stdout.strip().splitlines()[-1])


@dataclass
class KueueOptions:
    gpu_quota: int = 16
    pods_ready_timeout: str = "10s"  # waitForPodsReady.timeout
    requeue_base_seconds: int = 30  # back-off before a workload evicted for that timeout is requeued
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the Configuration


def configuration(opts: KueueOptions, webhook_port: int, cert_dir: Path, health_port: int) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for a manager outside the cluster."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
        "waitForPodsReady": {
            "timeout": opts.pods_ready_timeout,
            "blockAdmission": True,
            "requeuingStrategy": {
                "timestamp": "Eviction",
                "backoffBaseSeconds": opts.requeue_base_seconds,
                "backoffMaxSeconds": opts.requeue_base_seconds * 4,
            },
        },
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": "0"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "leaderElection": {"leaderElect": False},
        "clientConnection": {"qps": 200, "burst": 400},
        # The visibility API server would listen on a fixed port and register with the aggregator.
        "featureGates": {"VisibilityOnDemand": False},
        **opts.extra,
    }


def kueue_objects(opts: KueueOptions) -> list[dict[str, Any]]:
    """The ResourceFlavor, the ClusterQueue and the priority classes, fields written out (no
    defaulting webhook runs)."""
    api = f"{GROUP}/{VERSION}"
    flavor = {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}, "spec": {}}
    queue = {
        "apiVersion": api,
        "kind": "ClusterQueue",
        "metadata": {"name": CLUSTER_QUEUE},
        "spec": {
            "namespaceSelector": {},
            "queueingStrategy": "BestEffortFIFO",
            # A higher-priority workload that does not fit evicts lower-priority admitted ones.
            "preemption": {"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Never"},
            "resourceGroups": [
                {
                    "coveredResources": ["nvidia.com/gpu"],
                    "flavors": [
                        {"name": FLAVOR, "resources": [{"name": "nvidia.com/gpu", "nominalQuota": opts.gpu_quota}]}
                    ],
                }
            ],
        },
    }
    priorities = [
        {
            "apiVersion": api,
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": name},
            "value": value,
            "description": f"forgeline tests: {name} priority",
        }
        for name, value in PRIORITIES.items()
    ]
    return [flavor, queue, *priorities]


@dataclass(eq=False)
class Kueue:
    """A running Kueue manager; `stop()` ends it."""

    cluster: Any
    workdir: Path
    options: KueueOptions
    proc: procs.Proc | None = None
    health_port: int = 0

    def ready(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.health_port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def queue_active(self) -> bool:
        out = self.cluster.kubectl("get", f"clusterqueues.{GROUP}", CLUSTER_QUEUE, "-o", "json").stdout
        conditions = json.loads(out).get("status", {}).get("conditions") or []
        return any(c["type"] == "Active" and c["status"] == "True" for c in conditions)

    def local_queue(self, namespace: str, name: str = LOCAL_QUEUE) -> str:
        """Create LocalQueue `name` in `namespace`, pointing at the session's ClusterQueue."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": CLUSTER_QUEUE},
        }
        self.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(body))
        return name

    def log(self, lines: int = 80) -> str:
        return self.proc.tail(lines) if self.proc is not None else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=5)
            self.proc = None


def start_kueue(cluster: Any, workdir: Path, options: KueueOptions | None = None) -> Kueue:
    """Install Kueue's CRDs and queues, start the manager, return once it reports ready."""
    opts = options or KueueOptions()
    bin_dir = kueue_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    apply_crds(cluster, bin_dir / "crds")
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)  # exists on a second start
    objects = "\n".join(json.dumps(o) for o in kueue_objects(opts))
    cluster.kubectl("apply", "--server-side", "-f", "-", input=objects)

    # One serving certificate for 127.0.0.1 (the cluster's) for both servers that insist on one.
    certs = workdir / "certs"
    certs.mkdir(exist_ok=True)
    shutil.copyfile(cluster.pki.serving_cert, certs / "tls.crt")
    shutil.copyfile(cluster.pki.serving_key, certs / "tls.key")
    kueue = Kueue(cluster, workdir, opts, health_port=procs.free_port())
    config = workdir / "config.yaml"
    config.write_text(json.dumps(configuration(opts, procs.free_port(), certs, kueue.health_port), indent=1))
    env = {**cluster.env(), "KUEUE_METRICS_CERT_DIR": str(certs)}
    argv = [str(bin_dir / "kueue"), f"--config={config}", f"--kubeconfig={cluster.kubeconfig}", "--zap-log-level=2"]
    kueue.proc = procs.spawn("kueue", argv, log_path=workdir / "kueue.log", env=env)
    try:
        procs.wait_until(kueue.ready, timeout=60, what="Kueue's /readyz", proc=kueue.proc)
        procs.wait_until(kueue.queue_active, timeout=60, what=f"ClusterQueue {CLUSTER_QUEUE} Active", proc=kueue.proc)
    except BaseException:
        kueue.stop()
        raise
    return kueue
