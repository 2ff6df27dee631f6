"""Session fixtures for the real servers the tests run against (see tests/testbed/).

Each starts on first use and stops at the end of the session, also when tests fail:
``cluster`` (control plane + kwok GPU nodes + the process node), ``s3`` (seaweedfs with access
keys enforced), ``kueue`` (Kueue's manager from its Go module, with a GPU ClusterQueue; see
testbed/kueue.py) and ``prometheus`` (Debian's Prometheus; ``prometheus.promtool`` for rules).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def cluster() -> Iterator[object]:
    from testbed.launcher import start_cluster

    c = start_cluster()
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(c.kubeconfig)  # for kopf, kubectl and helm started by tests
    try:
        yield c
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old
        c.stop()


@pytest.fixture(scope="session")
def kueue(cluster: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from testbed.kueue import start_kueue

    manager = start_kueue(cluster, tmp_path_factory.mktemp("kueue"))
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from testbed.s3 import start_s3

    server = start_s3(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from testbed.prometheus import start_prometheus

    server = start_prometheus(tmp_path_factory.mktemp("prometheus"))
    try:
        yield server
    finally:
        server.stop()
