"""Start a real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok (fake GPU nodes) and, optionally, the process node.

Why plain subprocesses and not kwokctl: we want exactly the flags below (RBAC and admission on, a
static admin token, our own PKI and kwok stages, every port on 127.0.0.1), one log file per
component, and the same clean-up guarantees as every other testbed server (see procs.py).

Used by the pytest ``cluster`` fixture and by ``make dev-cluster``::

    PYTHONPATH=tests python -m testbed.launcher      # prints the kubeconfig, runs until Ctrl-C

The binaries come from ``tests/cluster/kube/build.sh`` (cached under ~/.cache/forgeline/testbins;
FORGELINE_TESTBIN_DIR overrides the directory).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import http.client
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import procs
from testbed.pki import SERVICE_IP, Pki, make_pki

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "cluster" / "kube" / "build.sh"
STAGES = Path(__file__).with_name("kwok-stages.yaml")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl", "helm")

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# The in-tree gang scheduling of KEP-4671 (alpha, off by default): the Workload and PodGroup API
# (scheduling.k8s.io/v1alpha2 since 1.36) and the scheduler's GangScheduling plugin. The same gates
# on every component, as a cluster would set them; turned on from GANG_SINCE_MINOR on.
GANG_FEATURE_GATES = "GenericWorkload=true,GangScheduling=true"
GANG_RUNTIME_CONFIG = "scheduling.k8s.io/v1alpha2=true"
GANG_SINCE_MINOR = 36
GPU_RESOURCE = "nvidia.com/gpu"


def testbin_dir() -> Path:
    """The directory with the control-plane binaries; builds them on a cold cache (minutes)."""
    res = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed with exit {res.returncode} (its log is on stderr above)")
    bin_dir = Path(res.stdout.strip().splitlines()[-1])
    missing = [b for b in BINARIES if not (bin_dir / b).exists()]
    if missing:
        raise RuntimeError(f"{bin_dir} lacks {missing}; rerun {BUILD_SCRIPT}")
    return bin_dir


def kube_minor(bin_dir: Path) -> int:
    """The minor version of the control-plane binaries (`kube-apiserver --version`: Kubernetes v1.36.3)."""
    out = subprocess.run([str(bin_dir / "kube-apiserver"), "--version"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1].split(".")[1])


@dataclass
class ClusterOptions:
    gpu_nodes: int = 4
    gpus_per_node: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    max_pods: int = 110  # pods each GPU node takes (the kubelet's default; scale benches raise it)
    process_node: bool = True
    process_node_gpus: int = 0
    process_node_env: dict[str, str] = field(default_factory=dict)  # added to every process-node container
    gang_scheduling: bool = True  # serve the Workload/PodGroup API, gang plugin on (1.36+ binaries)
    workdir: Path | None = None  # default: a new directory under the system temp dir
    start_timeout: float = 120.0


def gpu_node_manifest(name: str, gpus: int, product: str, max_pods: int = 110) -> dict[str, Any]:
    """A fake GPU node for kwok: the resources the scheduler sees, the labels GPU Operator sets."""
    if max_pods < 1:
        raise ValueError(f"max_pods: a node takes at least one pod, got {max_pods}")
    resources = {
        "cpu": "64",
        "memory": "512Gi",
        "pods": str(max_pods),
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: str(gpus),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.count": str(gpus),
            },
        },
        "spec": {"taints": [{"key": GPU_RESOURCE, "effect": "NoSchedule"}]},
        "status": {"capacity": resources, "allocatable": resources},
    }


@dataclass(eq=False)
class Cluster:
    """A running control plane. ``stop()`` (or leaving the ``with`` block) ends every process."""

    bin_dir: Path
    workdir: Path
    pki: Pki
    server: str
    token: str
    kubeconfig: Path
    options: ClusterOptions
    procs: list[procs.Proc] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    process_node: Any = None  # testbed.processnode.ProcessNode when options.process_node
    gang_scheduling: bool = False  # the Workload/PodGroup API is served, the gang plugin is on
    _stopped: bool = False
    _client: Any = None

    # -- clients -------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """A shared kubernetes.client.ApiClient (made on first use)."""
        if self._client is None:
            self._client = self.api_client()
        return self._client

    def api_client(self) -> Any:
        """A new kubernetes.client.ApiClient for this cluster (admin token, TLS verified)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.pki.ca_cert)
        cfg.api_key = {"authorization": f"Bearer {self.token}"}
        return client.ApiClient(cfg)

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG and the testbin dir first on PATH (kubectl, helm)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["KUBECACHEDIR"] = str(self.workdir / "kube-cache")  # kubectl's discovery cache, per cluster
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args], env=self.env(), capture_output=True, text=True, input=input
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    # -- life cycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.process_node is not None:
            self.process_node.stop()
        # All at once, with one short deadline: the state is thrown away, so a clean shutdown buys
        # nothing, and kube-apiserver alone can take many seconds to drain its watches.
        for proc in self.procs:
            proc.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 1.5
        for proc in self.procs:
            proc.stop(grace=max(0.0, deadline - time.monotonic()))
        shutil.rmtree(self.workdir / "etcd-data", ignore_errors=True)

    def restart_apiserver(self, timeout: float = 120.0) -> float:
        """Stop kube-apiserver (SIGTERM, as an upgrade's rollout does) and start it again with the
        same flags and port; returns once /readyz answers, with the seconds it was away."""
        old = next(p for p in self.procs if p.name == "kube-apiserver")
        argv = [str(a) for a in old.popen.args]
        began = time.monotonic()
        old.stop(grace=10)
        self.procs.remove(old)
        new = procs.spawn("kube-apiserver", argv, log_path=old.log_path)
        self.procs.append(new)
        procs.wait_until(
            lambda: _https_ok(self.server, "/readyz", self.token, self.pki.ca_cert),
            timeout=timeout,
            what="kube-apiserver /readyz after a restart",
            proc=new,
        )
        return time.monotonic() - began

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        return (
            f"kubeconfig {self.kubeconfig}\nserver     {self.server}\nlogs       {self.workdir}/logs\n"
            f"binaries   {self.bin_dir}\nstart      {self.timings.get('total', 0):.1f}s "
            f"({', '.join(f'{k} {v:.1f}s' for k, v in self.timings.items() if k != 'total')})"
        )


def _https_ok(server: str, path: str, token: str, ca: Path) -> bool:
    host, port = server.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=2)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status == 200
    finally:
        conn.close()


def _http_ok(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    finally:
        conn.close()


def _write_kubeconfig(path: Path, server: str, ca: Path, token: str) -> None:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: forgeline-testbed
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: forgeline-testbed
  context: {{cluster: forgeline-testbed, user: admin, namespace: default}}
current-context: forgeline-testbed
"""
    )
    path.chmod(0o600)


def start_cluster(options: ClusterOptions | None = None, bin_dir: Path | None = None) -> Cluster:
    """Start everything and return once nodes are Ready and the default ServiceAccount exists."""
    opts = options or ClusterOptions()
    bin_dir = bin_dir or testbin_dir()
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="forgeline-cluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    pki = make_pki(workdir / "pki")
    token = secrets.token_hex(16)
    (workdir / "tokens.csv").write_text(f"{token},admin,admin-uid,system:masters\n")
    etcd_port, etcd_peer, api_port, kwok_port = (procs.free_port() for _ in range(4))
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    _write_kubeconfig(kubeconfig, server, pki.ca_cert, token)
    cluster = Cluster(bin_dir, workdir, pki, server, token, kubeconfig, opts, timings=timings)
    cluster.gang_scheduling = opts.gang_scheduling and kube_minor(bin_dir) >= GANG_SINCE_MINOR
    gang_flags = [f"--feature-gates={GANG_FEATURE_GATES}"] if cluster.gang_scheduling else []
    _live_clusters.add(cluster)
    timings["pki"] = time.monotonic() - t0

    def start(name: str, argv: list[str]) -> procs.Proc:
        proc = procs.spawn(name, argv, log_path=logs / f"{name}.log")
        cluster.procs.append(proc)
        return proc

    try:
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        etcd = start(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={workdir / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
        )
        procs.wait_until(lambda: _http_ok(etcd_url), timeout=30, what="etcd /health", proc=etcd)
        timings["etcd"] = time.monotonic() - t0 - sum(timings.values())

        apiserver = start(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--token-auth-file={workdir / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--kubelet-preferred-address-types=InternalIP,Hostname",  # kubectl logs -> the process node
                "--enable-admission-plugins=NodeRestriction",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_IP}/16",
                "--allow-privileged=true",
                "--profiling=false",
                "--enable-garbage-collector=true",
                "--event-ttl=1h",
                *gang_flags,
                *([f"--runtime-config={GANG_RUNTIME_CONFIG}"] if gang_flags else []),
            ],
        )
        procs.wait_until(
            lambda: _https_ok(server, "/readyz", token, pki.ca_cert),
            timeout=opts.start_timeout,
            what="kube-apiserver /readyz",
            proc=apiserver,
        )
        timings["apiserver"] = time.monotonic() - t0 - sum(timings.values())

        start(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=false",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--controllers=*",
                "--profiling=false",
                *gang_flags,
            ],
        )
        start(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--profiling=false",
                *gang_flags,
            ],
        )
        start(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={kubeconfig}",
                f"--config={STAGES}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{kwok_port}",
                "--cidr=10.244.0.1/16",
                "--node-ip=10.240.0.1",
            ],
        )
        _create_nodes_and_wait(cluster)
        timings["nodes+controllers"] = time.monotonic() - t0 - sum(timings.values())
    except BaseException:
        cluster.stop()
        raise
    timings["total"] = time.monotonic() - t0
    return cluster


def _create_nodes_and_wait(cluster: Cluster) -> None:
    from kubernetes import client

    opts = cluster.options
    api: Any = client.CoreV1Api(cluster.api_client())  # takes plain dicts at runtime
    names = [f"gpu-{i}" for i in range(opts.gpu_nodes)]
    for name in names:
        api.create_node(gpu_node_manifest(name, opts.gpus_per_node, opts.gpu_product, opts.max_pods))
    if opts.process_node:
        from testbed.processnode import ProcessNode

        cluster.process_node = ProcessNode(
            cluster.api_client,
            cluster.workdir / "process-node",
            gpus=opts.process_node_gpus,
            extra_env=opts.process_node_env,
        )
        cluster.process_node.start()
        names.append(cluster.process_node.name)

    def nodes_ready() -> bool:
        ready = 0
        for node in api.list_node().items:
            conds = {c.type: c.status for c in node.status.conditions or []}
            ready += node.metadata.name in names and conds.get("Ready") == "True"
        return ready == len(names)

    def default_sa() -> bool:
        # The ServiceAccount admission plugin rejects pods until the controller made this account.
        api.read_namespaced_service_account("default", "default")
        return True

    kwok = next(p for p in cluster.procs if p.name == "kwok")
    procs.wait_until(nodes_ready, timeout=opts.start_timeout, what="nodes Ready", proc=kwok)
    kcm = next(p for p in cluster.procs if p.name == "kube-controller-manager")
    procs.wait_until(default_sa, timeout=opts.start_timeout, what="the default ServiceAccount", proc=kcm)


# Clusters still running at interpreter exit are stopped (procs' own atexit hook is the backstop).
_live_clusters: weakref.WeakSet[Cluster] = weakref.WeakSet()


def _stop_live_clusters() -> None:
    for cluster in list(_live_clusters):
        with contextlib.suppress(Exception):
            cluster.stop()


# Registered after procs' own hook, so it runs first (atexit is LIFO).
atexit.register(_stop_live_clusters)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.launcher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-nodes", type=int, default=4)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--max-pods", type=int, default=110, help="pods each GPU node takes")
    parser.add_argument("--no-process-node", action="store_true")
    parser.add_argument("--process-node-gpus", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    opts = ClusterOptions(
        gpu_nodes=args.gpu_nodes,
        gpus_per_node=args.gpus_per_node,
        max_pods=args.max_pods,
        process_node=not args.no_process_node,
        process_node_gpus=args.process_node_gpus,
        workdir=args.workdir,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with start_cluster(opts) as cluster:
        print(cluster.describe(), file=sys.stderr)
        print(f"export KUBECONFIG={cluster.kubeconfig}  PATH={cluster.bin_dir}:$PATH", file=sys.stderr)
        print("Ctrl-C stops the cluster.", file=sys.stderr)
        print(cluster.kubeconfig, flush=True)
        stop.wait()
        print("stopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
