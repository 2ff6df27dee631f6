"""Artifact storage through fsspec: atomic commit, verified fetch, checkpoint listing.

Every artifact (a stage's output or one checkpoint) is a prefix of files plus `_MANIFEST.json`,
written last. A reader trusts nothing without the manifest, and checks each file's size and
sha256 against it, so an upload interrupted at any point (a killed pod, a lost connection) can
never be mistaken for an artifact. The same code serves `file://` (local runs, tests) and `s3://`
(clusters; credentials come from the standard AWS_* environment variables through botocore, the
endpoint from the config, so pods never see credentials in a spec field).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import fsspec

from forgeline.jobs.contract import MANIFEST_NAME, FileEntry, InputError, Manifest, normalise_digest, sha256_hex

CHUNK = 8 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class Storage:
    """A filesystem plus the URI scheme; paths in and out are full URIs."""

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint

    def fs(self, uri: str) -> tuple[Any, str]:
        options: dict[str, Any] = {}
        if uri.startswith("s3://") and self.endpoint:
            options["client_kwargs"] = {"endpoint_url": self.endpoint}
        fs, path = fsspec.core.url_to_fs(uri, **options)
        return fs, path

    def exists(self, uri: str) -> bool:
        fs, path = self.fs(uri)
        return bool(fs.exists(path))

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.fs(uri)
        return bytes(fs.cat_file(path))

    def write_bytes(self, uri: str, data: bytes) -> None:
        fs, path = self.fs(uri)
        parent = path.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(path, data)

    def put_file(self, local: str | Path, uri: str) -> None:
        fs, path = self.fs(uri)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local), path)

    def get_file(self, uri: str, local: str | Path) -> None:
        fs, path = self.fs(uri)
        fs.get_file(path, str(local))

    def list_dirs(self, uri: str) -> list[str]:
        """Names of the immediate sub-prefixes of `uri` (empty when it does not exist)."""
        fs, path = self.fs(uri)
        try:
            entries = fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory")

    def remove(self, uri: str, recursive: bool = False) -> None:
        fs, path = self.fs(uri)
        if fs.exists(path):
            fs.rm(path, recursive=recursive)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def describe_files(local_dir: Path, prefix: str = "") -> list[FileEntry]:
    entries = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        if rel == MANIFEST_NAME:
            continue
        entries.append(FileEntry(path=prefix + rel, size=path.stat().st_size, sha256=file_sha256(path)))
    return entries


def upload_files(storage: Storage, local_dir: Path, uri: str) -> list[FileEntry]:
    """Upload every file under local_dir to uri (no manifest); returns their entries."""
    entries = describe_files(local_dir)
    for entry in entries:
        storage.put_file(local_dir / entry.path, join(uri, entry.path))
    return entries


def commit(storage: Storage, uri: str, manifest: Manifest) -> str:
    """Write the manifest, the commit point; returns its sha256 (the artifact's digest)."""
    data = manifest.to_bytes()
    storage.write_bytes(join(uri, MANIFEST_NAME), data)
    return sha256_hex(data)


def publish_dir(storage: Storage, local_dir: Path, uri: str, manifest: Manifest) -> str:
    """Upload a local directory as an artifact: drop any old manifest, files, then manifest."""
    storage.remove(join(uri, MANIFEST_NAME))
    manifest.files = upload_files(storage, local_dir, uri)
    return commit(storage, uri, manifest)


def read_manifest(storage: Storage, uri: str, digest: str | None = None) -> tuple[Manifest, str]:
    """The manifest of a complete artifact, or InputError naming the URI."""
    murl = join(uri, MANIFEST_NAME)
    try:
        data = storage.read_bytes(murl)
    except FileNotFoundError:
        raise InputError(
            uri,
            f"no {MANIFEST_NAME}: the artifact is missing or its upload never "
            "finished; run (or rerun) the stage that produces it",
        ) from None
    sha = sha256_hex(data)
    want = normalise_digest(digest)
    if want is not None and want != sha:
        raise InputError(uri, f"manifest digest is sha256:{sha}, the config expects sha256:{want}")
    return Manifest.from_bytes(data, uri), sha


def fetch(
    storage: Storage, uri: str, local_dir: Path, digest: str | None = None, only: list[str] | None = None
) -> tuple[Manifest, str]:
    """Download a complete artifact into local_dir, verifying every file against its manifest.

    A local copy that already matches (same manifest digest, marker file) is reused, so ranks
    sharing a node and restarted attempts do not download twice.
    """
    manifest, sha = read_manifest(storage, uri, digest)
    marker = local_dir / f".fetched-{sha}"
    if marker.exists():
        return manifest, sha
    local_dir.mkdir(parents=True, exist_ok=True)
    for entry in manifest.files:
        if only is not None and entry.path not in only:
            continue
        target = local_dir / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        # Several processes may fetch the same artifact into the same place (two nodes of a local
        # run, ranks sharing a scratch volume): each downloads to a name of its own and renames
        # into place, so no one ever reads a half-written file.
        part = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.part")
        try:
            storage.get_file(join(uri, entry.path), part)
            if part.stat().st_size != entry.size or file_sha256(part) != entry.sha256:
                raise InputError(uri, f"file {entry.path} does not match its manifest (size or sha256)")
            os.replace(part, target)
        except FileNotFoundError:
            raise InputError(uri, f"file {entry.path} listed in the manifest is missing") from None
        finally:
            part.unlink(missing_ok=True)
    if only is None:
        marker.write_text(sha)
    return manifest, sha


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def scratch_root() -> Path:
    return Path(os.environ.get("FORGELINE_SCRATCH", "/tmp/forgeline-scratch"))
