"""Debian's Prometheus (and promtool) for tests, unpacked from the .deb into a cache outside the repo.

``apt-get download prometheus`` + ``dpkg -x`` needs no root and no service set-up; the unpacked
tree is cached under ~/.cache/forgeline/prometheus/<deb name> (FORGELINE_PROMETHEUS_DIR overrides
it). Prometheus 2.42 (bookworm): no Prometheus-3-only syntax in rules.

A session-scoped server starts with no scrape jobs, a 1 s scrape and evaluation interval, and
the lifecycle API on; a test installs its own scrape config (and rule files) with
:meth:`PrometheusServer.configure`, which reloads the server in place.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed import procs

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "forgeline" / "prometheus"


def prometheus_dir() -> Path:
    """A directory with bin/prometheus and bin/promtool (downloads and unpacks the .deb once)."""
    override = os.environ.get("FORGELINE_PROMETHEUS_DIR")
    if override:
        return Path(override)
    for found in sorted(CACHE.glob("*/usr/bin/prometheus")):
        return found.parent
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run(["apt-get", "download", "prometheus"], cwd=tmp, capture_output=True, text=True)
        if res.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            res = subprocess.run(["apt-get", "download", "prometheus"], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("prometheus_*.deb"))
        if res.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download prometheus failed: {res.stderr.strip()}")
        target = CACHE / debs[0].stem
        partial = CACHE / f".{debs[0].stem}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(debs[0]), str(partial)], check=True)
        partial.rename(target)  # atomic: a half-unpacked tree is never found by the glob above
    return target / "usr" / "bin"


@dataclass(eq=False)
class PrometheusServer:
    url: str
    config_path: Path
    promtool: Path
    proc: procs.Proc

    def configure(self, scrape_configs: list[dict[str, Any]], rule_files: list[str] | None = None) -> None:
        """Replace the scrape jobs (and rule files) and reload; fails if Prometheus rejects them."""
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": scrape_configs,
            "rule_files": rule_files or [],
        }
        self.config_path.write_text(yaml.safe_dump(config))
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:  # 500 with the reason on a bad config
            resp.read()

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus /api/v1/{path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the list of {metric, value} samples."""
        return self.api("query", query=expr)["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def stop(self) -> None:
        self.proc.stop(grace=5)


def start_prometheus(workdir: Path, timeout: float = 60) -> PrometheusServer:
    bin_dir = prometheus_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}}))
    port = procs.free_port()
    argv = [
        str(bin_dir / "prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
    proc = procs.spawn("prometheus", argv, log_path=workdir / "prometheus.log")
    server = PrometheusServer(f"http://127.0.0.1:{port}", config, bin_dir / "promtool", proc)

    def ready() -> bool:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
            return resp.status == 200

    try:
        procs.wait_until(ready, timeout=timeout, what="Prometheus /-/ready", proc=proc)
    except BaseException:
        server.stop()
        raise
    return server
