"""The artifact manifest and the result summary.

`_MANIFEST.json` is written last and is the commit point of an artifact; its bytes' sha256 is the
artifact's digest, which downstream stages record as lineage. The result summary is what rank 0
leaves in the container's termination message (<= 4 KB), so the operator learns the output URI,
digest and final metrics without object-storage credentials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from forgeline.api.stageconfig import CONTRACT_VERSION
from forgeline.api.torchrun import FORGELINE_TERMINATION_MESSAGE_PATH
from forgeline.jobs.errors import InputError

MANIFEST_NAME = "_MANIFEST.json"
RESULT_MAX_BYTES = 4096
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


@dataclass
class FileEntry:
    path: str
    size: int
    sha256: str


def unsafe_path_reason(path: str) -> str | None:
    """Why a manifest entry's path could escape the directory it is fetched into, or None.

    A manifest comes from the store, which another tenant or a compromised stage may have written:
    its paths are relative POSIX paths below the artifact, or the artifact is refused whole.
    """
    if not isinstance(path, str) or not path:
        return "is empty or not a string"
    if "\\" in path or "\x00" in path:
        return "contains a backslash or a NUL byte"
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return "is absolute"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has an empty, '.' or '..' segment"
    return None


@dataclass
class Manifest:
    """What `_MANIFEST.json` holds; its bytes' sha256 is the artifact's digest."""

    stage: str
    run: dict[str, Any]
    files: list[FileEntry]
    config: dict[str, Any]
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    version: int = CONTRACT_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, uri: str) -> Manifest:
        try:
            obj = json.loads(data)
            obj["files"] = [FileEntry(**f) for f in obj["files"]]
            manifest = cls(**obj)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(uri, f"{MANIFEST_NAME} is malformed ({exc})") from None
        for entry in manifest.files:
            reason = unsafe_path_reason(entry.path)
            if reason is not None:
                raise InputError(uri, f"{MANIFEST_NAME} lists the file {entry.path!r}, whose path {reason}; refused")
        return manifest


# Parts of a stage config that change between attempts or hosts without changing what is trained.
VOLATILE_CONFIG_KEYS = ("run", "observability", "storage")


def config_fingerprint(config: dict[str, Any]) -> str:
    """The sha256 of what a stage config trains: the same for every attempt of the same run.

    A rerun skips a stage, and an attempt resumes a checkpoint, only when this matches.
    """
    stable = {k: v for k, v in config.items() if k not in VOLATILE_CONFIG_KEYS}
    return sha256_hex(json.dumps(stable, sort_keys=True, default=str).encode())


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two stage configs, as `path: old -> new` lines (volatile keys left out)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in VOLATILE_CONFIG_KEYS:
            continue
        a, b, path = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, path + ".")
        elif a != b:
            changes.append(f"{path}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    return changes


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalise_digest(digest: str | None) -> str | None:
    """Accept both `sha256:<hex>` and bare `<hex>`; compare bare hex."""
    if digest is None:
        return None
    return digest.split(":", 1)[1] if digest.startswith("sha256:") else digest


# ----------------------------------------------------------------------------- result summary


def result_summary(output_uri: str, manifest_sha256: str, metrics: dict[str, Any]) -> bytes:
    """The termination message: at most 4 KB, so metrics are dropped (largest first) to fit."""
    metrics = dict(metrics)
    while True:
        body = json.dumps(
            {"output_uri": output_uri, "manifest_sha256": manifest_sha256, "metrics": metrics}, sort_keys=True
        ).encode()
        if len(body) <= RESULT_MAX_BYTES or not metrics:
            return body
        biggest = max(metrics, key=lambda k: len(json.dumps(metrics[k])) + len(k))
        del metrics[biggest]


def error_summary(error: BaseException, exit_code: int) -> bytes:
    """What a failed stage leaves in the termination message, so the operator can show the cause."""
    return json.dumps({"error": str(error)[: RESULT_MAX_BYTES - 200], "exit_code": exit_code}).encode()


def peek_termination_path(config_path: str) -> str | None:
    """The configured termination path even from a config that fails validation, so a bad
    config's exit-2 message still reaches the operator."""
    try:
        with open(config_path, "rb") as fh:
            value = json.loads(fh.read())["observability"]["termination_message_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def termination_path(configured: str | None) -> str | None:
    """The config's path, else the pod's FORGELINE_TERMINATION_MESSAGE_PATH, else the kubelet's
    default when it exists (never created on a machine that has none)."""
    if configured:
        return configured
    if os.environ.get(FORGELINE_TERMINATION_MESSAGE_PATH):
        return os.environ[FORGELINE_TERMINATION_MESSAGE_PATH]
    return DEFAULT_TERMINATION_PATH if os.path.exists(DEFAULT_TERMINATION_PATH) else None


def write_termination_message(body: bytes, configured: str | None) -> None:
    path = termination_path(configured)
    if path is None:
        return
    try:
        with open(path, "wb") as fh:
            fh.write(body[:RESULT_MAX_BYTES])
    except OSError:
        pass  # a missing message must not turn a finished training run into a failure
