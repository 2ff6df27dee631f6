"""The generated CRDs are accepted by the real API server (structural schemas, CEL compiled).

The invalid-manifest corpus against the API server belongs here too (it needs crds/ installed:
use ``testbed.kube.apply_crds``)."""

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


# --- the invalid-manifest corpus against the real API server --------------------------------

CORPUS = sorted((Path(__file__).resolve().parents[1] / "invalid").glob("*.yaml"))
PLURALS = {"PretrainJob": "pretrainjobs", "RewardModelJob": "rewardmodeljobs", "RLHFJob": "rlhfjobs",
           "LoRAJob": "lorajobs"}  # fmt: skip


def server_expectation(path: Path) -> str:
    line = next(line for line in path.read_text().splitlines() if line.startswith("# server:"))
    return line.split(":", 1)[1].strip()


def create_dry_run(cluster, body: dict) -> tuple[int, str]:
    """POST one object with strict field validation and dry-run; (HTTP status, server message)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.CustomObjectsApi(cluster.client)
    plural = PLURALS.get(body.get("kind"), "pretrainjobs")
    try:
        api.create_namespaced_custom_object(
            "forgeline.io", "v1alpha1", "default", plural, body, dry_run="All", field_validation="Strict"
        )
    except ApiException as exc:
        return exc.status, exc.body or ""
    return 201, ""


@pytest.mark.parametrize("manifest", CORPUS, ids=lambda p: p.stem)
def test_api_server_rejects_what_the_schema_and_cel_can_express(cluster, installed_crds, manifest: Path) -> None:
    import yaml as pyyaml

    expectation = server_expectation(manifest)
    if expectation == "n/a":  # not an object at all: nothing to send (forgeline validate only)
        return
    docs = [d for d in pyyaml.safe_load_all(manifest.read_text()) if isinstance(d, dict)]
    results = [create_dry_run(cluster, d) for d in docs]
    if expectation.startswith("accept"):
        # Rules across objects (cycles, duplicate names): only `forgeline validate` and the operator see them.
        assert all(code == 201 for code, _ in results), results
        return
    ((code, message),) = results
    assert code in (400, 404, 422), (code, message)
    if expectation == "reject":
        expected = next(line.split(":", 2)[1].strip() for line in manifest.read_text().splitlines()
                        if line.startswith("# expect:"))  # fmt: skip
        field = expected.split(":")[0].split(" ")[0]
        leaf = field.split(".")[-1].split("[")[0]
        assert leaf in message, f"{field!r} not named in the server's message: {message}"
