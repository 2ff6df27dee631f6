"""Atomic commit (no manifest without every file), verified fetch, and the metrics endpoint."""

from __future__ import annotations

import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from forgeline.jobs import storage as st
from forgeline.jobs.contract import MANIFEST_NAME, InputError, Manifest


class FailingStorage(st.Storage):
    """Real file:// storage whose connection drops after `budget` file uploads."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget

    def put_file(self, local: str | Path, uri: str) -> None:
        if self.budget == 0:
            raise ConnectionError("connection reset mid-upload")
        self.budget -= 1
        super().put_file(local, uri)


def artifact_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"w" * 10_000)
    (src / "sub" / "tokenizer.json").write_text("{}")
    return src


def manifest() -> Manifest:
    return Manifest(stage="pretrain", run={}, files=[], config={})


def test_interrupted_upload_never_leaves_a_manifest(tmp_path: Path) -> None:
    src, out = artifact_dir(tmp_path), tmp_path / "out"
    with pytest.raises(ConnectionError):
        st.publish_dir(FailingStorage(budget=2), src, out.as_uri(), manifest())
    assert (out / "config.json").exists(), "some files did land"
    assert not (out / MANIFEST_NAME).exists()
    with pytest.raises(InputError, match=f"{out.as_uri()}.*no {MANIFEST_NAME}"):
        st.read_manifest(st.Storage(), out.as_uri())


def test_republishing_drops_the_old_manifest_before_any_file(tmp_path: Path) -> None:
    src, out = artifact_dir(tmp_path), tmp_path / "out"
    st.publish_dir(st.Storage(), src, out.as_uri(), manifest())
    assert (out / MANIFEST_NAME).exists()
    with pytest.raises(ConnectionError):
        st.publish_dir(FailingStorage(budget=1), src, out.as_uri(), manifest())
    assert not (out / MANIFEST_NAME).exists(), "a half-replaced artifact must not look complete"


def test_fetch_verifies_every_file_against_the_manifest(tmp_path: Path) -> None:
    src, out = artifact_dir(tmp_path), tmp_path / "out"
    digest = st.publish_dir(st.Storage(), src, out.as_uri(), manifest())
    got, sha = st.fetch(st.Storage(), out.as_uri(), tmp_path / "copy", digest=f"sha256:{digest}")
    assert sha == digest and (tmp_path / "copy" / "sub" / "tokenizer.json").exists()
    assert {f.path for f in got.files} == {"config.json", "model.safetensors", "sub/tokenizer.json"}
    (out / "model.safetensors").write_bytes(b"w" * 9_999 + b"x")
    with pytest.raises(InputError, match=r"model\.safetensors does not match"):
        st.fetch(st.Storage(), out.as_uri(), tmp_path / "copy2")
    with pytest.raises(InputError, match="digest"):
        st.read_manifest(st.Storage(), out.as_uri(), digest="sha256:" + "0" * 64)


class InterleavingStorage(st.Storage):
    """Forces the bad interleaving of two fetchers of one artifact into one place: the second
    starts writing a file (half of it) just after the first wrote the same name, and finishes
    only once the first has verified its copy (or after 5 s, when the first never gets there)."""

    def __init__(self) -> None:
        super().__init__()
        self.first_done = threading.Event()
        self.second_started = threading.Event()
        self.verifying = threading.Event()
        self.callers = 0
        self.lock = threading.Lock()

    def get_file(self, uri: str, local: str | Path) -> None:
        with self.lock:
            self.callers += 1
            first = self.callers == 1
        if first:
            super().get_file(uri, local)
            self.first_done.set()
            assert self.second_started.wait(10)
            return
        assert self.first_done.wait(10)
        data = Path(uri.removeprefix("file://")).read_bytes()
        with open(local, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            self.second_started.set()
            self.verifying.wait(5)
            fh.write(data[len(data) // 2 :])


def test_concurrent_fetches_into_one_place_never_see_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes of a local run share a filesystem and fetch the same input at the same time."""
    src, out = artifact_dir(tmp_path), tmp_path / "out"
    (src / "sub" / "tokenizer.json").unlink()
    (src / "config.json").unlink()
    st.publish_dir(st.Storage(), src, out.as_uri(), manifest())  # one file: model.safetensors
    storage, target = InterleavingStorage(), tmp_path / "shared"
    real_sha256 = st.file_sha256

    def sha256_signalling(path: str | Path) -> str:
        storage.verifying.set()
        return real_sha256(path)

    monkeypatch.setattr(st, "file_sha256", sha256_signalling)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: st.fetch(storage, out.as_uri(), target)[1], range(2)))
    assert len(set(results)) == 1
    assert (target / "model.safetensors").read_bytes() == b"w" * 10_000
    assert not list(target.rglob("*.part")), "no temporary download is left behind"


def test_rank_zero_metrics_endpoint_serves_training_metrics() -> None:
    import socket

    from forgeline.jobs.metrics import StageMetrics

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = StageMetrics("pretrain")
    m.serve(port)
    m.on_step(5, 2048, 0.2)
    m.on_log(3.25)
    m.on_checkpoint(0.5, 1234)
    m.accuracy.labels("pretrain").set(0.9)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in (
        'forgeline_train_step{stage="pretrain"} 5.0',
        'forgeline_train_loss{stage="pretrain"} 3.25',
        'forgeline_train_tokens_total{stage="pretrain"} 2048.0',
        'forgeline_checkpoint_bytes_total{stage="pretrain"} 1234.0',
        'forgeline_reward_accuracy{stage="pretrain"} 0.9',
    ):
        assert line in body
    assert "forgeline_train_step_duration_seconds_bucket" in body
    assert "forgeline_checkpoint_save_duration_seconds_count" in body


def _planted_manifest(tmp_path: Path, path: str) -> str:
    """A committed artifact, then its manifest rewritten by a hostile writer to list `path`."""
    src, out = artifact_dir(tmp_path), tmp_path / "store"
    st.publish_dir(st.Storage(), src, out.as_uri(), manifest())
    m = Manifest.from_bytes((out / MANIFEST_NAME).read_bytes(), out.as_uri())
    m.files[0].path = path
    (out / MANIFEST_NAME).write_bytes(m.to_bytes())
    return out.as_uri()


@pytest.mark.parametrize(
    "path",
    ["../escape.txt", "sub/../../escape.txt", "/etc/cron.d/x", "a//b", "./config.json", "C:/x", "a\\..\\b", ""],
)
def test_fetch_refuses_manifest_paths_that_escape_the_directory(tmp_path: Path, path: str) -> None:
    uri = _planted_manifest(tmp_path, path)
    local = tmp_path / "scratch" / "model"
    with pytest.raises(InputError, match="refused"):
        st.fetch(st.Storage(), uri, local)
    assert not (tmp_path / "scratch" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_fetch_refuses_a_symlink_planted_in_the_local_directory(tmp_path: Path) -> None:
    src, out = artifact_dir(tmp_path), tmp_path / "store"
    st.publish_dir(st.Storage(), src, out.as_uri(), manifest())
    local = tmp_path / "scratch"
    local.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (local / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InputError, match="outside"):
        st.fetch(st.Storage(), out.as_uri(), local)
    assert list(outside.iterdir()) == []
