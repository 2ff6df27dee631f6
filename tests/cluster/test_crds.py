"""The generated CRDs are accepted by the real API server (structural schemas, CEL compiled).

The invalid-manifest corpus against the API server, beside `forgeline validate`, is
test_validate_parity.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from testbed.kube import apply_crds

pytestmark = pytest.mark.cluster
CRDS = Path(__file__).resolve().parents[2] / "crds"


@pytest.fixture(scope="module")
def installed_crds(cluster):
    return apply_crds(cluster, CRDS)


def test_api_server_accepts_every_crd(installed_crds):
    assert len(installed_crds) == len(list(CRDS.glob("*.yaml")))


def test_kubectl_explain_shows_the_spec_fields(cluster, installed_crds):
    for crd in installed_crds:
        plural, _, group = crd.partition(".")
        out = cluster.kubectl("explain", f"{plural}.{group}.spec").stdout
        assert "FIELDS:" in out, out
