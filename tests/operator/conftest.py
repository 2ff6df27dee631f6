"""The operator as a subprocess (`forgeline operator`) against the testbed control plane.

One operator for the session, started after the CRDs are installed; each test gets its own
namespace. Jobs choose their fate on the kwok nodes through a label on the job object, which the
operator passes through to its pods (testbed/kwok-stages.yaml): `hang` keeps pods Running until a
test patches one pod to fail or be evicted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from testbed.kube import apply_crds, new_namespace, wait_for
from testbed.operator import OperatorProcess, pretrain_manifest

REPO = Path(__file__).resolve().parents[2]
FORGELINE = Path(sys.executable).with_name("forgeline")
GROUP, VERSION = "forgeline.io", "v1alpha1"
PLURALS = {
    "PretrainJob": "pretrainjobs",
    "RewardModelJob": "rewardmodeljobs",
    "RLHFJob": "rlhfjobs",
    "LoRAJob": "lorajobs",
    "EvalJob": "evaljobs",
}
ON_KWOK_CPU = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


class OperatorUnderTest(OperatorProcess):
    """The session's operator: file:// store, kwok pods (no trainer metrics to scrape)."""

    def __init__(self, cluster: Any, workdir: Path) -> None:
        self.store = f"file://{workdir / 'store'}"
        args = [
            f"--store={self.store}",
            "--resync-seconds=5",
            "--trainer-metrics-port=0",
            "--workers=4",
            # Only the namespaces of these tests (the ns fixture's op-*): other suites in the same
            # session (tests/e2e) run operators of their own against the same cluster.
            "--namespace=op-*",
            # The store is file://; jobs that write to the test S3 server's bucket (start_s3's) use
            # it as a prefix every namespace may write to (docs/trust-model.md).
            "--allowed-uri-prefix=s3://forgeline-test/",
        ]
        super().__init__(args, cluster.env(), workdir)


@pytest.fixture(scope="session")
def crds(cluster: Any) -> list[str]:
    return apply_crds(cluster, REPO / "crds")


@pytest.fixture(scope="session")
def operator(cluster: Any, crds: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorUnderTest]:
    op = OperatorUnderTest(cluster, tmp_path_factory.mktemp("operator"))
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def other_cluster_jobs(tmp_path: Path) -> Iterator[Callable[[Any], Jobs]]:
    """For a test that starts a cluster of its own: CRDs, an operator and a namespace on it, as a
    Jobs to drive it (the operator is stopped at the end; its log is `<tmp_path>/operator-1.log`)."""
    started: list[OperatorUnderTest] = []

    def on(other: Any) -> Jobs:
        apply_crds(other, REPO / "crds")
        op = OperatorUnderTest(other, tmp_path)
        op.start()
        started.append(op)
        core = client.CoreV1Api(other.client)
        return Jobs(
            client.CustomObjectsApi(other.client), core, client.BatchV1Api(other.client), new_namespace(core, "op")
        )

    yield on
    for op in started:
        op.stop()


@pytest.fixture
def core(cluster: Any) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.client)


@pytest.fixture
def batch(cluster: Any) -> client.BatchV1Api:
    return client.BatchV1Api(cluster.client)


@pytest.fixture
def custom(cluster: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.client)


@pytest.fixture
def ns(core: client.CoreV1Api, custom: client.CustomObjectsApi) -> Iterator[str]:
    name = new_namespace(core, "op")
    yield name
    # Free the fake GPUs before the next test: delete the jobs, wait for their pods to go.
    for plural in PLURALS.values():
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, name, plural)
    wait_for(
        lambda: not core.list_namespaced_pod(name, label_selector="forgeline.io/job").items,
        timeout=60,
        what=f"the pods in {name} to be deleted",
    )
    core.delete_namespace(name)


class Jobs:
    """Create and read forgeline jobs in one namespace; wait on their status with deadlines."""

    def __init__(self, custom: client.CustomObjectsApi, core: client.CoreV1Api, batch: client.BatchV1Api, ns: str):
        self.custom, self.core, self.batch, self.ns = custom, core, batch, ns

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURALS[body["kind"]], body))

    def get(self, name: str, kind: str = "PretrainJob") -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURALS[kind], name))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def status(self, name: str, kind: str = "PretrainJob") -> dict[str, Any]:
        return (self.get(name, kind) or {}).get("status") or {}

    def patch_spec(self, name: str, spec: dict[str, Any], kind: str = "PretrainJob") -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURALS[kind], name, {"spec": spec})

    def delete(self, name: str, kind: str = "PretrainJob") -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURALS[kind], name)

    def wait(
        self, name: str, check: Any, *, timeout: float = 60, what: str = "", kind: str = "PretrainJob"
    ) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def probe() -> dict[str, Any] | None:
            nonlocal last
            last = self.status(name, kind)
            return last if check(last) else None

        try:
            return wait_for(probe, timeout=timeout, what=f"{kind}/{name} {what}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast status: {last}") from None

    def wait_state(self, name: str, state: str, *, timeout: float = 60, kind: str = "PretrainJob") -> dict[str, Any]:
        return self.wait(name, lambda s: s.get("state") == state, timeout=timeout, what=f"state {state}", kind=kind)

    def pods(self, name: str, attempt: int | None = None) -> list[Any]:
        selector = f"forgeline.io/job={name}" + (f",forgeline.io/attempt={attempt}" if attempt else "")
        return [
            p
            for p in self.core.list_namespaced_pod(self.ns, label_selector=selector).items
            if not p.metadata.deletion_timestamp
        ]

    def batch_jobs(self, name: str) -> list[Any]:
        return list(self.batch.list_namespaced_job(self.ns, label_selector=f"forgeline.io/job={name}").items)


@pytest.fixture
def jobs(
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    ns: str,
    operator: OperatorProcess,
) -> Jobs:
    return Jobs(custom, core, batch, ns)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


@pytest.fixture
def manifest() -> Any:
    return pretrain_manifest


@pytest.fixture
def cond() -> Any:
    return condition
