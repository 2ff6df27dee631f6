"""Helm for the chart tests: the pinned binary from the testbins, rendering to parsed objects.

The helm binary (v3.19.0) and kubectl come from tests/cluster/kube/build.sh, like the control
plane's binaries (FORGELINE_TESTBIN_DIR overrides the directory).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "forgeline"
FULL_VALUES = Path(__file__).with_name("values-full.yaml")
MONITORING_API = "monitoring.coreos.com/v1"
Obj = dict[str, Any]


@functools.cache
def helm_binary() -> Path:
    from testbed.launcher import testbin_dir

    return testbin_dir() / "helm"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stderr}{res.stdout}")
    return res


def template_args(
    *,
    values: Iterable[Path] = (),
    set_values: dict[str, Any] | None = None,
    api_versions: Iterable[str] = (),
    namespace: str = "forgeline",
    release: str = "forgeline",
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for path in values:
        args += ["--values", str(path)]
    for key, value in (set_values or {}).items():
        args += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    for api in api_versions:
        args += ["--api-versions", api]
    return args


def render(**kwargs: Any) -> list[Obj]:
    """`helm template` -> the parsed objects, in order (empty documents dropped)."""
    out = helm(*template_args(**kwargs)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def alert_groups(objects: list[Obj]) -> Obj:
    """The rendered PrometheusRule as a plain rules file (what promtool and Prometheus read)."""
    return {"groups": one(objects, "PrometheusRule")["spec"]["groups"]}


def minimal_job_body(name: str = "base", namespace: str = "team-a") -> Obj:
    """The smallest valid PretrainJob (for rendering its pods, not for training)."""
    return {
        "apiVersion": "forgeline.io/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"config": {"layers": 2, "hiddenSize": 64, "heads": 4, "vocabSize": 512, "contextLength": 64}},
            "data": {"synthetic": {}},
        },
    }
