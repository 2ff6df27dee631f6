"""`forgeline import SRC DEST`: a plain Hugging Face model directory made a committed artifact.

Stages read a plain HF directory directly too (storage.read_manifest synthesizes its manifest),
but then every reader hashes every file, and the directory may change under a running pipeline.
An imported artifact is a frozen copy with a real `_MANIFEST.json`: its files are copied one by
one, each checked against the sha256 the source listing gave (a file that changed during the
copy fails the import), and the manifest is written last, so an interrupted import is never
mistaken for an artifact. Its lineage names the source and its synthesized digest.

A model saved without its tokenizer takes one from a separate directory (`--tokenizer`): only the
tokenizer files are taken from it (storage.TOKENIZER_PATTERNS), overriding any of the model's.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from forgeline.jobs import storage as st
from forgeline.jobs.contract import FileEntry, InputError, Manifest, sha256_hex

IMPORT_STAGE = "import"


@dataclass(frozen=True)
class Imported:
    uri: str
    digest: str
    files: int
    bytes: int


def as_uri(location: str) -> str:
    """A URI as given, or a local path made a file:// URI."""
    return location if "://" in location else Path(location).resolve().as_uri()


def _tokenizer_files(storage: st.Storage, uri: str) -> dict[str, int]:
    sizes = {rel: n for rel, n in st.list_files(storage, uri).items() if "/" not in rel}
    found = {rel: n for rel, n in sizes.items() if st.matches(rel, st.TOKENIZER_PATTERNS)}
    if not found:
        raise InputError(uri, "has no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json, ...)")
    return found


def _copy(storage: st.Storage, src: str, entry: FileEntry, dest: str, tmp: Path) -> None:
    local = tmp / "file"
    storage.get_file(st.join(src, entry.path), local)
    if local.stat().st_size != entry.size or st.file_sha256(local) != entry.sha256:
        raise InputError(src, f"file {entry.path} changed while it was imported; import again")
    storage.put_file(local, st.join(dest, entry.path))
    local.unlink()


def import_model(storage: st.Storage, src: str, dest: str, tokenizer: str | None = None) -> Imported:
    """Copy the HF model directory `src` (plus the tokenizer at `tokenizer`) to `dest` and commit it."""
    sizes = st.plain_model_files(storage, src, need_tokenizer=tokenizer is None)
    if sizes is None:
        raise InputError(src, f"no config.json: expected {st.EXPECTED}")
    source = st.synthesize_manifest(st.describe_remote(storage, src, sizes))
    inputs = {"source": {"uri": src, "manifest_sha256": sha256_hex(source.to_bytes())}}
    plan = [(src, e) for e in source.files]
    if tokenizer is not None:
        tok_sizes = _tokenizer_files(storage, tokenizer)
        tok = st.synthesize_manifest(st.describe_remote(storage, tokenizer, tok_sizes))
        inputs["tokenizer"] = {"uri": tokenizer, "manifest_sha256": sha256_hex(tok.to_bytes())}
        plan = [(src, e) for e in source.files if e.path not in tok_sizes] + [(tokenizer, e) for e in tok.files]
    st.begin_upload(storage, dest)  # drops an earlier manifest: a half-replaced artifact never looks complete
    with tempfile.TemporaryDirectory(prefix="forgeline-import-") as tmp:
        for origin, entry in plan:
            _copy(storage, origin, entry, dest, Path(tmp))
    files = sorted((e for _, e in plan), key=lambda e: e.path)
    manifest = Manifest(
        stage=IMPORT_STAGE,
        run={},
        files=files,
        config={"source": src, "tokenizer": tokenizer},
        inputs=inputs,
    )
    digest = st.end_upload(storage, dest, manifest)
    return Imported(dest, digest, len(files), sum(e.size for e in files))
