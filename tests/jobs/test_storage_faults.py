"""Object-store faults inside the trainer: transient errors retried to a deadline, answers not.

Faults are injected at the fsspec layer: `FlakyFileSystem` is a real local filesystem, registered
under the `flaky://` protocol, that fails the calls a test names (method, path fragment, how many
times) with the error a real store client raises (s3fs's own translation of a botocore
ClientError where the store answered). Nothing of ours is replaced.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from fsspec.implementations.local import LocalFileSystem
from s3fs.errors import translate_boto_error

from forgeline.jobs import storage as st
from forgeline.jobs.contract import MANIFEST_NAME, InputError, Manifest
from forgeline.jobs.errors import PERMANENT_EXIT_CODES
from forgeline.jobs.retry import RETRY_SECONDS_ENV, RetryPolicy, StorageAccessDenied, StorageUnavailable
from tests.jobs.conftest import parse_events, pretrain_config


@dataclass
class Fault:
    method: str
    fragment: str  # a part of the path the call is about
    times: float  # how many matching calls fail (float("inf"): all of them)
    error: Callable[[], BaseException]
    seen: int = 0


class FlakyFileSystem(LocalFileSystem):
    """A local filesystem that fails matching calls the way a store client does."""

    protocol = ("flaky", "file", "local")  # strips file:// too, for when it stands in for file://
    faults: ClassVar[list[Fault]] = []
    calls: ClassVar[list[str]] = []

    def _maybe_fail(self, method: str, path: Any) -> None:
        FlakyFileSystem.calls.append(f"{method} {path}")
        for fault in FlakyFileSystem.faults:
            if fault.method == method and fault.fragment in str(path) and fault.seen < fault.times:
                fault.seen += 1
                raise fault.error()

    def put_file(self, lpath: Any, rpath: Any, **kw: Any) -> Any:
        self._maybe_fail("put_file", rpath)
        return super().put_file(lpath, rpath, **kw)

    def get_file(self, rpath: Any, lpath: Any, **kw: Any) -> Any:
        self._maybe_fail("get_file", rpath)
        return super().get_file(rpath, lpath, **kw)

    def cat_file(self, path: Any, *args: Any, **kw: Any) -> Any:
        self._maybe_fail("cat_file", path)
        return super().cat_file(path, *args, **kw)

    def pipe_file(self, path: Any, *args: Any, **kw: Any) -> Any:
        self._maybe_fail("pipe_file", path)
        return super().pipe_file(path, *args, **kw)

    def ls(self, path: Any, *args: Any, **kw: Any) -> Any:
        self._maybe_fail("ls", path)
        return super().ls(path, *args, **kw)


fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)


@pytest.fixture(autouse=True)
def no_faults_left() -> Iterator[None]:
    FlakyFileSystem.faults.clear()
    FlakyFileSystem.calls.clear()
    yield
    FlakyFileSystem.faults.clear()


def s3_error(code: str, status: int, operation: str = "PutObject") -> BaseException:
    """What s3fs raises when S3 answers `status` with `code`: its translation of the ClientError."""
    response: Any = {
        "Error": {"Code": code, "Message": f"{code} (test)"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return translate_boto_error(ClientError(response, operation))


TRANSIENT: dict[str, Callable[[], BaseException]] = {
    "connection refused": lambda: ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    "connection reset": lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    "endpoint unreachable": lambda: EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    "timeout": lambda: TimeoutError("timed out"),
    "503 SlowDown": lambda: s3_error("SlowDown", 503),
    "500 InternalError": lambda: s3_error("InternalError", 500),
    "502 unknown code": lambda: s3_error("BadGateway", 502),
    "429 throttling": lambda: s3_error("TooManyRequests", 429),
}


def quick(deadline: float) -> RetryPolicy:
    return RetryPolicy(deadline=deadline, base=0.01, cap=0.05)


def artifact_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"w" * 10_000)
    return src


def empty_manifest() -> Manifest:
    return Manifest(stage="pretrain", run={}, files=[], config={})


def flaky_uri(path: Path) -> str:
    return f"flaky://{path}"


@pytest.mark.parametrize("kind", list(TRANSIENT))
def test_transient_store_error_is_retried_until_the_upload_commits(tmp_path: Path, kind: str) -> None:
    src, out = artifact_dir(tmp_path), tmp_path / "out"
    FlakyFileSystem.faults.append(Fault("put_file", "model.safetensors", 3, TRANSIENT[kind]))
    storage = st.Storage(retry=quick(30))
    digest = st.publish_dir(storage, src, flaky_uri(out), empty_manifest())
    assert FlakyFileSystem.faults[0].seen == 3
    manifest, sha = st.fetch(st.Storage(), out.as_uri(), tmp_path / "copy")
    assert sha == digest and {f.path for f in manifest.files} == {"config.json", "model.safetensors"}


def test_store_down_past_the_deadline_raises_storage_unavailable(tmp_path: Path) -> None:
    src, out = artifact_dir(tmp_path), tmp_path / "out"
    FlakyFileSystem.faults.append(Fault("put_file", "", float("inf"), TRANSIENT["connection refused"]))
    with pytest.raises(StorageUnavailable, match="object store unavailable") as raised:
        st.publish_dir(st.Storage(retry=quick(0.3)), src, flaky_uri(out), empty_manifest())
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    assert FlakyFileSystem.faults[0].seen > 2, "retried before giving up"
    assert not (out / MANIFEST_NAME).exists()


def test_missing_manifest_is_an_answer_not_retried(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=f"no {MANIFEST_NAME}"):
        st.read_manifest(st.Storage(retry=quick(30)), flaky_uri(tmp_path / "empty"))
    assert sum(c.startswith("cat_file") for c in FlakyFileSystem.calls) == 1


def test_access_denied_is_not_retried_and_says_what_to_check(tmp_path: Path) -> None:
    src, out = artifact_dir(tmp_path), tmp_path / "out"
    FlakyFileSystem.faults.append(Fault("put_file", "", float("inf"), lambda: s3_error("AccessDenied", 403)))
    with pytest.raises(StorageAccessDenied, match=r"access denied.*credentials") as raised:
        st.publish_dir(st.Storage(retry=quick(30)), src, flaky_uri(out), empty_manifest())
    assert isinstance(raised.value, PermissionError)
    assert FlakyFileSystem.faults[0].seen == 1


def test_retry_deadline_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RETRY_SECONDS_ENV, "7.5")
    assert st.Storage().retry.deadline == 7.5
    monkeypatch.delenv(RETRY_SECONDS_ENV)
    assert st.Storage().retry.deadline == 300


# ----------------------------------------------------------------------------- a stage, in-process


def tiny_pretrain(output_uri: str, workdir: Path) -> Path:
    cfg = pretrain_config(output_uri, max_steps=6, checkpoint_interval=2, batch_size=8, log_interval=2, warmup_steps=1)
    cfg["model_config"] = {**cfg["model_config"], "layers": 1, "hidden_size": 32, "intermediate_size": 64}
    cfg["data"]["synthetic"]["examples"] = 200
    cfg["observability"] = {"termination_message_path": str(workdir / "termination-log"), "metrics_port": 0}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "pretrain.json"
    path.write_text(json.dumps(cfg))
    return path


def run_pretrain_in_process(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, Any]]]:
    from forgeline.jobs.pretrain import main

    capsys.readouterr()
    code = main(["--config", str(config)])
    return code, parse_events(capsys.readouterr().out)


@pytest.fixture
def flaky_file_scheme() -> Iterator[None]:
    """file:// served by FlakyFileSystem: a stage accepts only s3:// and file:// output URIs."""
    fsspec.register_implementation("file", FlakyFileSystem, clobber=True)
    try:
        yield
    finally:
        fsspec.register_implementation("file", LocalFileSystem, clobber=True)


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("flaky_file_scheme")
def test_failed_checkpoint_upload_leaves_the_previous_checkpoint_the_one_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FORGELINE_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv(RETRY_SECONDS_ENV, "0.5")
    out = tmp_path / "store" / "base"
    config = tiny_pretrain(out.as_uri(), tmp_path / "work")
    # The store goes away for good while step 4's model state is uploaded (its rng file already landed).
    FlakyFileSystem.faults.append(Fault("put_file", "step-4/state.pt", float("inf"), TRANSIENT["connection reset"]))

    code, events = run_pretrain_in_process(config, capsys)
    assert code != 0 and code not in PERMANENT_EXIT_CODES, "a store outage fails the attempt as retryable"
    termination = json.loads((tmp_path / "work" / "termination-log").read_text())
    assert "object store unavailable" in termination["error"]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [2]
    assert (out / "checkpoints" / "step-2" / MANIFEST_NAME).exists(), "the previous checkpoint is intact"
    assert (out / "checkpoints" / "step-4" / "rng-0.pt").exists(), "a partial upload landed ..."
    assert not (out / "checkpoints" / "step-4" / MANIFEST_NAME).exists(), "... without a manifest"

    FlakyFileSystem.faults.clear()
    code, events = run_pretrain_in_process(config, capsys)
    assert code == 0
    (resumed,) = [e for e in events if e["event"] == "resumed"]
    assert resumed["step"] == 2 and resumed["checkpoint"].endswith("/checkpoints/step-2")
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [4]
    st.read_manifest(st.Storage(), out.as_uri())
