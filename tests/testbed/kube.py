"""Small helpers for tests against the testbed cluster: deadlines instead of sleeps, namespaces
that are ready for pods, placement on the GPU or the process node, and CRD installation."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from testbed.processnode import PROCESS_NODE_LABEL

T = TypeVar("T")

# Pod spec fragments that place a pod on a kwok GPU node or on the process node.
ON_GPU_NODE: dict[str, Any] = {
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}
ON_PROCESS_NODE: dict[str, Any] = {
    "nodeSelector": {PROCESS_NODE_LABEL: "true"},
    "tolerations": [{"key": PROCESS_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
}
# The label and annotations the kwok stages read (see testbed/kwok-stages.yaml).
OUTCOME_LABEL = "testbed.forgeline.io/outcome"
EXIT_CODE_ANNOTATION = "testbed.forgeline.io/exit-code"
DELAY_ANNOTATION = "testbed.forgeline.io/delay"


def wait_for(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy and return that; fail after ``timeout`` s.

    Exceptions from ``check`` count as "not yet"; the last one is in the failure message."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def new_namespace(core: Any, prefix: str) -> str:
    """Create a namespace ``<prefix>-xxxxx`` and wait until pods can be created in it (its
    default ServiceAccount exists; the ServiceAccount admission plugin rejects pods before)."""
    ns = core.create_namespace({"metadata": {"generateName": f"{prefix}-"}}).metadata.name
    wait_for(lambda: core.read_namespaced_service_account("default", ns), timeout=30, what=f"{ns}/default SA")
    return ns


def pod_phase(core: Any, ns: str, name: str) -> str:
    return core.read_namespaced_pod(name, ns).status.phase


def events_for(core: Any, ns: str, name: str) -> list[Any]:
    return core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items


def apply_crds(cluster: Any, directory: Path, timeout: float = 60) -> list[str]:
    """Server-side apply every CRD manifest in ``directory`` and wait until each is Established.

    The place for the CRD acceptance tests: the API server's structural-schema and CEL checks run
    here, and any rejection raises with kubectl's message. Returns the CRD names."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    if not files:
        raise FileNotFoundError(f"no CRD manifests in {directory}")
    names = []
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.append(doc["metadata"]["name"])
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory))
    cluster.kubectl("wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *[f"crd/{n}" for n in names])
    # Established is not yet served: discovery and the OpenAPI document (kubectl explain,
    # server-side field validation) follow a moment later.
    for name in names:
        wait_for(functools.partial(_explains, cluster, name), timeout=timeout, what=f"{name} in discovery and OpenAPI")
    return names


def _explains(cluster: Any, crd_name: str) -> bool:
    plural, _, group = crd_name.partition(".")
    return cluster.kubectl("explain", f"{plural}.{group}", check=False).returncode == 0
