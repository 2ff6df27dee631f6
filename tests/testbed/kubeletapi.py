"""The one kubelet endpoint the process node serves: container logs, so ``kubectl logs`` works.

The API server proxies ``kubectl logs`` to ``https://<node InternalIP>:<kubeletEndpoint port>/
containerLogs/<ns>/<pod>/<container>``; it does not verify the kubelet's certificate unless
told to, so a self-signed one made here is enough. ``follow`` streams until the container's
process exits; ``tailLines`` and ``limitBytes`` are honoured; ``previous`` and exec are not.
"""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

# (namespace, pod, container) -> (log file, is the process still running?)
LogLookup = Callable[[str, str, str], tuple[Path, Callable[[], bool]]]


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "kubelet.crt", directory / "kubelet.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "30", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class KubeletLogServer:
    def __init__(self, directory: Path, node_name: str, lookup: LogLookup) -> None:
        cert, key = _self_signed(directory, node_name)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        handler = type("Handler", (_Handler,), {"lookup": staticmethod(lookup)})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{node_name}-kubelet", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    lookup: LogLookup

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, "the process node serves only /containerLogs/<ns>/<pod>/<container>")
            return
        query = urllib.parse.parse_qs(url.query)
        try:
            path, running = self.lookup(parts[1], parts[2], parts[3])
        except (FileNotFoundError, KeyError) as e:
            self.send_error(404, str(e))
            return
        data = path.read_bytes() if path.exists() else b""
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"][0]) :]) if int(query["tailLines"][0]) > 0 else b""
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"][0])]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(data)
        if query.get("follow", ["false"])[0] != "true":
            return
        offset = path.stat().st_size if path.exists() else 0
        while True:  # stream what the process appends until it exits
            alive = running()
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk:
                offset += len(chunk)
                self.wfile.write(chunk)
                self.wfile.flush()
            if not alive:
                return
            time.sleep(0.2)
