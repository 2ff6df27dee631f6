"""Fixtures shared by the smoke tests of the control plane and the process node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from testbed.kube import new_namespace


@pytest.fixture
def core(cluster: Any) -> Any:
    return client.CoreV1Api(cluster.client)


@pytest.fixture
def ns(core: Any) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = new_namespace(core, "smoke")
    yield name
    core.delete_namespace(name)
