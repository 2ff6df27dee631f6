"""`forgeline operator` as a subprocess against the test control plane, and the small job it is
most often given.

The cluster tests, the end-to-end pipeline and the chart's RBAC tests all run the real operator
this way, each with the flags of the set-up it stands for; this class owns the parts they share:
free listen ports on 127.0.0.1 (every test process shares this machine's ports), a process group
of its own, waiting for kopf's liveness endpoint, SIGKILL for crash tests, and the log.
"""

from __future__ import annotations

import signal
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed import procs
from testbed.kube import OUTCOME_LABEL

FORGELINE = Path(sys.executable).with_name("forgeline")


class OperatorProcess:
    """Start, kill (as a crashed pod: no clean-up runs), start again, stop."""

    def __init__(self, args: Sequence[str], env: dict[str, str], workdir: Path, name: str = "forgeline-operator"):
        self.args, self.env, self.workdir, self.name = list(args), env, workdir, name
        self.proc: procs.Proc | None = None
        self.metrics_port = 0
        self.liveness_port = 0
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"operator-{self.starts}.log"

    def start(self, extra_args: Sequence[str] = ()) -> None:
        self.metrics_port, self.liveness_port = procs.free_port(), procs.free_port()
        self.starts += 1
        argv = [
            str(FORGELINE),
            "operator",
            *self.args,
            *extra_args,
            f"--metrics-port={self.metrics_port}",
            "--metrics-addr=127.0.0.1",
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
        ]
        env = {**self.env, "PYTHONSAFEPATH": "1"}
        self.proc = procs.spawn(self.name, argv, log_path=self.log_path, env=env)
        procs.wait_until(self.live, timeout=60, what="the operator's liveness endpoint", proc=self.proc)

    def live(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
            return bool(r.status == 200)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.signal_group(signal.SIGKILL)
            self.proc.popen.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=5)
            self.proc = None

    def log(self, lines: int = 80) -> str:
        return self.proc.tail(lines) if self.proc is not None else ""

    def logs(self) -> str:
        """The tail of every start's log (restart tests start more than once)."""
        return "\n".join(p.read_text()[-4000:] for p in sorted(self.workdir.glob("operator-*.log")))


def pretrain_manifest(
    name: str,
    *,
    outcome: str | None = "hang",
    nodes: int = 1,
    gpus: int = 1,
    run_policy: dict[str, Any] | None = None,
    **resources: Any,
) -> dict[str, Any]:
    """A small PretrainJob manifest; `outcome` picks what kwok does with its pods."""
    return {
        "apiVersion": "forgeline.io/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": name, "labels": {OUTCOME_LABEL: outcome} if outcome else {}},
        "spec": {
            "model": {"config": {"layers": 2, "hiddenSize": 64, "heads": 4, "vocabSize": 512, "contextLength": 64}},
            "data": {"synthetic": {"examples": 200}},
            "training": {"maxSteps": 10},
            "resources": {"nodes": nodes, "gpusPerNode": gpus, **resources},
            "runPolicy": run_policy or {},
        },
    }


def store_operator(cluster: Any, s3: Any, ns: str, workdir: Path, secret: str) -> OperatorProcess:
    """`forgeline operator` configured like a cluster install: S3 store and credentials by default.

    The manifests then need no storage or scheduling fields: --store, --storage-endpoint and
    --storage-secret supply the store, --node-selector/--toleration the process node (a dedicated
    training pool in real life).
    """
    from testbed.processnode import PROCESS_NODE_LABEL

    args = [
        f"--namespace={ns}",
        f"--store=s3://{s3.bucket}", f"--storage-endpoint={s3.endpoint}",
        f"--storage-secret={secret}", f"--trainer-env=AWS_DEFAULT_REGION={s3.region}",
        f"--node-selector={PROCESS_NODE_LABEL}=true", f"--toleration={PROCESS_NODE_LABEL}:NoSchedule",
        "--check-uri-inputs",
        # A scratch dir per pod, as each pod's own /tmp on a real node (the process node maps this
        # path into the pod's /tmp emptyDir).
        "--trainer-env=FORGELINE_SCRATCH=/tmp/forgeline-pod-scratch",
        # One network namespace for every pod here (as with hostNetwork): two stages running at
        # once cannot both serve rank 0's metrics on one port. (The process node itself gives each
        # gang its own rendezvous port.)
        "--trainer-metrics-port=30000-30999", "--resync-seconds=10", "--workers=4",
    ]  # fmt: skip
    # The operator reads direct-uri manifests itself (--check-uri-inputs): it gets the keys.
    return OperatorProcess(args, {**cluster.env(), **s3.env()}, workdir)


def store_namespace(cluster: Any, s3: Any, prefix: str, secret: str) -> str:
    """A fresh namespace for jobs on the S3 store: the CRDs applied, and `secret` holding the store's
    keys there, as a team's namespace on a cluster would have (the operator's --storage-secret)."""
    from kubernetes import client

    from testbed.kube import apply_crds, new_namespace

    apply_crds(cluster, Path(__file__).resolve().parents[2] / "crds")
    core = client.CoreV1Api(cluster.client)
    ns = new_namespace(core, prefix)
    keys = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    core.create_namespaced_secret(ns, {"metadata": {"name": secret}, "stringData": keys})
    return ns
