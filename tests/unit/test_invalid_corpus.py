"""Every manifest in tests/invalid/ fails `forgeline validate` with the message a user must see.

Each file's `# expect:` lines are the errors, each `field.path: message` (or the file-level message
where the file yields no object); tests/cluster/test_validate_parity.py holds the API server to the
same verdict and field path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from forgeline.cli.main import main

CORPUS = sorted((Path(__file__).parents[1] / "invalid").glob("*.yaml"))
EXAMPLES = sorted((Path(__file__).parents[2] / "examples").rglob("*.yaml"))
# error: FILE[#doc][ Kind/name]: [field.path: ]message
ERROR_LINE = re.compile(r"^error: (?P<file>\S+?\.yaml)(#\d+)?( [A-Za-z]+/\S+)?: \S.*$")


def expectations(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")  # one corpus file is not UTF-8 on purpose
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("# expect:")]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 80
    assert all(expectations(p) for p in CORPUS)


@pytest.mark.parametrize("manifest", CORPUS, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_with_its_message(manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(manifest)]) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[-1] == f"{len(lines) - 1} error(s) in 1 file(s)", err
    for line in lines[:-1]:
        match = ERROR_LINE.match(line)
        assert match and match["file"] == str(manifest), f"not an error line for {manifest}: {line!r}"
    for expected in expectations(manifest):
        assert any(expected in line for line in lines[:-1]), f"{expected!r} not in:\n{err}"


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


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_valid_example_passes(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(example)]) == 0
    assert re.fullmatch(r"ok: \d+ job\(s\) valid\n", capsys.readouterr().out)


def test_example_pipeline_holds_five_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(Path(__file__).parents[2] / "examples" / "pipeline.yaml")]) == 0
    assert "ok: 5 job(s) valid" in capsys.readouterr().out
