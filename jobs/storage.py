"""Artifact storage through fsspec: atomic commit, verified fetch, checkpoint listing.

Every artifact (a stage's output or one checkpoint) is a prefix of files plus `_MANIFEST.json`,
written last. A reader trusts nothing without the manifest, and checks each file's size and
sha256 against it, so an upload interrupted at any point (a killed pod, a lost connection) can
never be mistaken for an artifact. The same code serves `file://` (local runs, tests) and `s3://`
(clusters; credentials come from the standard AWS_* environment variables through botocore, the
endpoint from the config, so pods never see credentials in a spec field).

A plain Hugging Face model directory (config.json, weights, tokenizer files; no manifest) is
accepted wherever an artifact is read: `read_manifest` synthesizes its manifest from a listing
and each file's sha256, marked with stage `huggingface` and written nowhere. The synthesized
manifest has no timestamp and no URI, so the same bytes give the same digest wherever they lie
and whoever reads them (a stage, the local runner, the operator's probe).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import fsspec

from forgeline.jobs.contract import MANIFEST_NAME, FileEntry, InputError, Manifest, normalise_digest, sha256_hex
from forgeline.jobs.retry import Retrying, RetryPolicy

CHUNK = 8 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class Storage:
    """A filesystem plus the URI scheme; paths in and out are full URIs.

    Every call on the filesystem `fs()` returns is retried on transient errors (retry.py).
    """

    def __init__(self, endpoint: str | None = None, retry: RetryPolicy | None = None) -> None:
        self.endpoint = endpoint
        self.retry = retry if retry is not None else RetryPolicy.from_env()

    def fs(self, uri: str) -> tuple[Any, str]:
        options: dict[str, Any] = {}
        if uri.startswith("s3://") and self.endpoint:
            options["client_kwargs"] = {"endpoint_url": self.endpoint}
        fs, path = fsspec.core.url_to_fs(uri, **options)
        return Retrying(fs, self.retry), path

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


# Written before an artifact's first file and removed after its manifest: a directory that still
# has it is an upload that never finished, never a plain Hugging Face directory to read as one.
PENDING_NAME = "_UPLOAD_IN_PROGRESS"


def begin_upload(storage: Storage, uri: str) -> None:
    storage.remove(join(uri, MANIFEST_NAME))
    storage.write_bytes(join(uri, PENDING_NAME), b"files are being uploaded; _MANIFEST.json comes last\n")


def end_upload(storage: Storage, uri: str, manifest: Manifest) -> str:
    sha = commit(storage, uri, manifest)
    storage.remove(join(uri, PENDING_NAME))  # left behind by a crash here: harmless, the manifest wins
    return sha


def publish_dir(storage: Storage, local_dir: Path, uri: str, manifest: Manifest) -> str:
    """Upload a local directory as an artifact: drop any old manifest, files, then manifest."""
    begin_upload(storage, uri)
    manifest.files = upload_files(storage, local_dir, uri)
    return end_upload(storage, uri, manifest)


# ----------------------------------------------------------------------------- plain HF directories

PLAIN_STAGE = "huggingface"  # the `stage` of a synthesized manifest: no forgeline stage wrote it
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_PATTERNS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "chat_template.json",
    "chat_template.jinja",
)
SYNTHESIZED_NOTE = (
    "a plain Hugging Face model directory with no _MANIFEST.json: this manifest was computed from its "
    "files (path, size, sha256) and written nowhere"
)
EXPECTED = (
    f"a forgeline artifact ({MANIFEST_NAME}, written by a stage or `forgeline import`) or a Hugging Face "
    "model directory (config.json, *.safetensors or pytorch_model*.bin weights, tokenizer files)"
)


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def list_files(storage: Storage, uri: str) -> dict[str, int]:
    """Relative path -> size of every file under uri, leaving out hidden ones (`.git/`, `.cache/`)."""
    fs, root = storage.fs(uri)
    root = root.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    files = {}
    for name, info in found.items():
        rel = name[len(root) :].lstrip("/") if name.startswith(root) else name
        if not rel or info.get("type") != "file" or any(part.startswith(".") for part in rel.split("/")):
            continue
        files[rel] = int(info["size"])
    return files


def stream_sha256(storage: Storage, uri: str) -> str:
    fs, path = storage.fs(uri)
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def describe_remote(storage: Storage, uri: str, sizes: dict[str, int]) -> list[FileEntry]:
    return [FileEntry(rel, size, stream_sha256(storage, join(uri, rel))) for rel, size in sorted(sizes.items())]


def plain_model_files(storage: Storage, uri: str, need_tokenizer: bool = True) -> dict[str, int] | None:
    """The files of a plain Hugging Face model directory; None when there is no config.json at all.

    InputError when config.json is there but the weights (or, if needed, the tokenizer) are not.
    """
    sizes = list_files(storage, uri)
    if PENDING_NAME in sizes:
        raise InputError(
            uri,
            f"no {MANIFEST_NAME}: an upload here never finished ({PENDING_NAME} is still there); "
            "run (or rerun) the stage that produces it",
        )
    if "config.json" not in sizes:
        return None
    top = [rel for rel in sizes if "/" not in rel]
    if not any(matches(rel, WEIGHT_PATTERNS) for rel in top):
        raise InputError(
            uri, f"has config.json but no weights (*.safetensors or pytorch_model*.bin); expected {EXPECTED}"
        )
    if need_tokenizer and not any(matches(rel, TOKENIZER_PATTERNS) for rel in top):
        raise InputError(
            uri,
            "has a model but no tokenizer files (tokenizer.json, tokenizer_config.json, ...); add them, or "
            "bring the tokenizer in with `forgeline import SRC DEST --tokenizer TOKENIZER_URI`",
        )
    return sizes


def synthesize_manifest(files: list[FileEntry]) -> Manifest:
    """The manifest of a plain HF directory: files only, no timestamp, no URI (so digests are stable)."""
    return Manifest(
        stage=PLAIN_STAGE,
        run={},
        files=files,
        config={"synthesized": SYNTHESIZED_NOTE},
        created="",
    )


def is_synthesized(manifest: Manifest) -> bool:
    return manifest.stage == PLAIN_STAGE and manifest.created == ""


def read_plain_model(storage: Storage, uri: str) -> Manifest | None:
    """The synthesized manifest of a plain HF model directory at uri, or None if it is not one."""
    sizes = plain_model_files(storage, uri)
    if sizes is None:
        return None
    manifest = synthesize_manifest(describe_remote(storage, uri, sizes))
    # Re-validate the paths exactly as a stored manifest is (the listing comes from the store).
    return Manifest.from_bytes(manifest.to_bytes(), uri)


def read_manifest(storage: Storage, uri: str, digest: str | None = None) -> tuple[Manifest, str]:
    """The manifest of a complete artifact (or a plain HF model directory), or InputError naming the URI."""
    murl = join(uri, MANIFEST_NAME)
    try:
        data = storage.read_bytes(murl)
    except FileNotFoundError:
        plain = read_plain_model(storage, uri)
        if plain is None:
            raise InputError(
                uri,
                f"no {MANIFEST_NAME} and no config.json: expected {EXPECTED}; the artifact is missing or its "
                "upload never finished; run (or rerun) the stage that produces it",
            ) from None
        data = plain.to_bytes()
    sha = sha256_hex(data)
    want = normalise_digest(digest)
    if want is not None and want != sha:
        raise InputError(uri, f"manifest digest is sha256:{sha}, the config expects sha256:{want}")
    return Manifest.from_bytes(data, uri), sha


def fetch(
    storage: Storage,
    uri: str,
    local_dir: Path,
    digest: str | None = None,
    only: list[str] | None = None,
    known: tuple[Manifest, str] | None = None,
) -> tuple[Manifest, str]:
    """Download a complete artifact into local_dir, verifying every file against its manifest.

    A local copy that already matches (same manifest digest, marker file) is reused, so ranks
    sharing a node and restarted attempts do not download twice. `known` is a manifest the caller
    already read (for a plain HF directory, reading it means hashing every file: do it once).
    """
    manifest, sha = known if known is not None else read_manifest(storage, uri, digest)
    marker = local_dir / f".fetched-{sha}"
    if marker.exists():
        return manifest, sha
    local_dir.mkdir(parents=True, exist_ok=True)
    root = local_dir.resolve()
    for entry in manifest.files:
        if only is not None and entry.path not in only:
            continue
        target = local_dir / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        # The manifest's paths are checked when it is read; this also refuses a symlink planted
        # in the local directory (by an earlier fetch or a co-tenant of the scratch volume).
        if not target.parent.resolve().is_relative_to(root) or target.is_symlink():
            raise InputError(uri, f"file {entry.path} would be written outside {local_dir}; refused")
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
