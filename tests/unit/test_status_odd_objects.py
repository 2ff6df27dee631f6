"""`forgeline status` shows whatever the API server returns, and never answers with a traceback.

Objects written by hand, by an older operator or by another tool may hold anything where a
status, a condition or even the metadata should be."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from forgeline.cli.status import render_tree

GOOD = {
    "apiVersion": "forgeline.io/v1alpha1",
    "kind": "PretrainJob",
    "metadata": {"name": "base", "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"model": {"uri": "s3://m/base"}, "data": {"synthetic": {}}},
    "status": {"state": "Running", "restarts": 2, "progress": {"summary": "5/10 (50%)"}},
}

ODD_OBJECTS: list[Any] = [
    None,
    "PretrainJob/base",
    [GOOD],
    {},
    {"kind": ["PretrainJob"], "metadata": "base"},
    {"kind": "LoRAJob", "metadata": {"name": 7, "creationTimestamp": 12}},
    {"kind": "LoRAJob", "metadata": {"name": "tuned"}, "spec": [], "status": []},
    {"kind": "LoRAJob", "metadata": {"name": "a"}, "status": {"state": 3, "progress": "half", "output": "s3://x"}},
    {
        "kind": "LoRAJob",
        "metadata": {"name": "b"},
        "status": {"state": "Failed", "restarts": "three", "conditions": ["Failed", None, {"status": "False"}]},
    },
    {
        "kind": "LoRAJob",
        "metadata": {"name": "c"},
        "status": {"conditions": {"type": "Failed"}, "output": {"uri": 5, "digest": ["sha256:ab"]}},
    },
    {
        "kind": "LoRAJob",
        "metadata": {"name": "d"},
        "status": {"state": "Failed", "conditions": [{"type": "Failed", "reason": {"x": 1}, "message": 5}]},
    },
    {"kind": "LoRAJob", "metadata": {"name": "e"}, "status": {"state": "Line\nbreak", "restarts": True}},
]


@pytest.mark.parametrize("odd", ODD_OBJECTS, ids=range(len(ODD_OBJECTS)))
def test_an_odd_object_is_shown_beside_a_good_one(odd: Any) -> None:
    text = render_tree([GOOD, odd])
    assert "PretrainJob/base" in text and "Running (2 restarts)" in text
    assert all("\n" not in row for row in text.splitlines())


def test_all_odd_objects_at_once_render_one_row_each_for_the_named_ones() -> None:
    text = render_tree(ODD_OBJECTS)
    for name in ("LoRAJob/tuned", "LoRAJob/a", "LoRAJob/b", "LoRAJob/c", "LoRAJob/d", "LoRAJob/e"):
        assert name in text, text
    assert "Pending" in text  # a state that is not text reads as no state yet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_against_an_unreachable_server_prints_one_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{free_port()}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    result = subprocess.run(
        [sys.executable, "-m", "forgeline.cli.main", "status", "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: cannot reach the API server"), result.stderr


def test_status_without_a_kubeconfig_prints_one_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "forgeline.cli.main", "status", "--kubeconfig", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: cannot load a kubeconfig"), result.stderr
