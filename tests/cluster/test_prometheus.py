"""Prometheus is real: it scrapes a target the test supplies, and promtool checks rules."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator

import pytest
from testbed.kube import wait_for

pytestmark = pytest.mark.cluster


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"# TYPE forgeline_smoke_value gauge\nforgeline_smoke_value 42\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metrics_target() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_prometheus_scrapes_a_target_from_the_test_config(prometheus, metrics_target):
    prometheus.configure([{"job_name": "smoke", "static_configs": [{"targets": [metrics_target]}]}])

    samples = wait_for(
        lambda: prometheus.query('forgeline_smoke_value{job="smoke"}'),
        timeout=30,
        what="the first scrape of the smoke target",
    )

    assert samples[0]["value"][1] == "42"
    assert [t["health"] for t in prometheus.targets() if t["labels"]["job"] == "smoke"] == ["up"]


def test_promtool_rejects_a_rule_with_a_syntax_error(prometheus, tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("groups:\n- name: g\n  rules:\n  - alert: Stuck\n    expr: up == 0\n")
    bad.write_text("groups:\n- name: g\n  rules:\n  - alert: Stuck\n    expr: up ==\n")

    check = [str(prometheus.promtool), "check", "rules"]
    assert subprocess.run([*check, str(good)], capture_output=True).returncode == 0
    assert subprocess.run([*check, str(bad)], capture_output=True).returncode != 0
