"""Every manifest in tests/invalid/ fails `forgeline validate` with the message a user must see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from forgeline.cli.main import main

CORPUS = sorted((Path(__file__).parents[1] / "invalid").glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith("# expect:")]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30
    assert all(expectations(p) for p in CORPUS)


@pytest.mark.parametrize("manifest", CORPUS, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_with_its_message(manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(manifest)]) == 1
    err = capsys.readouterr().err
    for expected in expectations(manifest):
        assert expected in err, f"{expected!r} not in:\n{err}"


def test_validate_command_prints_errors_not_tracebacks() -> None:
    """The real console entry point, once, on the whole corpus at once."""
    result = subprocess.run(
        [sys.executable, "-m", "forgeline.cli.main", "validate", *map(str, CORPUS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"in {len(CORPUS)} file(s)" in result.stderr


def test_valid_example_pipeline_passes(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).parents[2] / "examples" / "pipeline.yaml"
    assert main(["validate", str(example)]) == 0
    assert "ok: 4 job(s) valid" in capsys.readouterr().out
