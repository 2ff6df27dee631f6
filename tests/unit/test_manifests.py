"""The manifest loader reads YAML as kubectl does, and refuses hostile input fast, with a message.

Inputs too large to commit to tests/invalid/ are generated here."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from forgeline.api.manifests import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_FILE_BYTES,
    ManifestSyntaxError,
    go_yaml_scalar,
    load_documents,
)
from forgeline.api.validate import InvalidManifest, parse_job, validate_documents

JOB = """apiVersion: forgeline.io/v1alpha1
kind: PretrainJob
metadata:
  name: base
spec:
  model:
    config: {layers: 2, hiddenSize: 64, heads: 4, vocabSize: 512, contextLength: 64}
  data:
    synthetic: {}
"""


def write(tmp_path: Path, text: str | bytes, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def load_error(path: Path) -> ManifestSyntaxError:
    with pytest.raises(ManifestSyntaxError) as caught:
        load_documents(path)
    return caught.value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0755", 493),  # YAML 1.1 octal, as go-yaml reads it
        ("0x1F", 31),
        ("0o17", 15),
        ("-0b101", -5),
        ("1_000", 1000),
        ("08", 8),  # not octal: go-yaml falls back to a float, JSON makes it 8
        ("2.0", 2),  # JSON has one number type: an integral number is an integer
        ("1e3", 1000),
        ("3e-4", 0.0003),
        (".5", 0.5),
        ("1:30", "1:30"),  # no sexagesimals in go-yaml
        ("1e400", "1e400"),  # overflow: go-yaml keeps the text
        ("1st", "1st"),
    ],
)
def test_plain_scalars_resolve_as_go_yaml_resolves_them(text: str, value: object) -> None:
    assert go_yaml_scalar(text) == value
    assert type(go_yaml_scalar(text)) is type(value)


def test_yaml_11_words_are_booleans_and_dates_stay_text(tmp_path: Path) -> None:
    path = write(tmp_path, "a: y\nb: NO\nc: on\nd: Off\ne: 2024-01-01\nf: =\ng: yes please\n")
    (doc,) = load_documents(path)
    assert doc.body == {"a": True, "b": False, "c": True, "d": False, "e": "2024-01-01", "f": "=", "g": "yes please"}
    assert doc.implicit[("a",)] == "y"


def test_keys_are_strings_as_kubectl_sends_them(tmp_path: Path) -> None:
    (doc,) = load_documents(write(tmp_path, "1: a\ntrue: b\n~: c\n"))
    assert doc.body == {"1": "a", "true": "b", "null": "c"}


def test_integral_numbers_and_empty_blocks_pass_as_on_the_api_server(tmp_path: Path) -> None:
    path = write(tmp_path, JOB + "  resources: {nodes: 2.0, cpu: 4}\n  training:\n  storage: ~\n")
    (doc,) = load_documents(path)
    job = parse_job(doc.body, doc.implicit)
    assert job.spec.resources.nodes == 2
    assert job.spec.training.batch_size == 8  # the default, as the server's pruning then defaulting gives


def test_python_field_names_are_not_part_of_the_api() -> None:
    from forgeline.api.manifests import Document

    body = {**_body(), "spec": {**_body()["spec"], "run_policy": {"suspend": True}}}
    _, problems = validate_documents([Document("job.yaml", 0, body)])
    assert [str(p.error) for p in problems] == ["spec.run_policy: unknown field; fields are camelCase: write runPolicy"]


def _body() -> dict[str, object]:
    import yaml

    return dict(yaml.safe_load(JOB))


def test_deep_nesting_is_refused_quickly_and_named(tmp_path: Path) -> None:
    path = write(tmp_path, JOB + "  resources:\n    nodes: " + "[" * 100_000 + "]" * 100_000 + "\n")
    started = time.monotonic()
    error = load_error(path)
    assert time.monotonic() - started < 2
    assert error.path == "spec.resources.nodes"
    assert f"is nested more than {MAX_DEPTH} levels deep" in error.message


def test_deep_block_mappings_are_refused(tmp_path: Path) -> None:
    text = "spec:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(MAX_DEPTH + 5))
    error = load_error(write(tmp_path, text))
    assert error.path.startswith("spec.a.a")
    assert "nested more than" in error.message


def test_alias_bomb_is_refused_without_expanding_it(tmp_path: Path) -> None:
    levels = ["a: &a [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]" for p, c in zip("abcdefghi", "bcdefghij", strict=True)]
    path = write(tmp_path, "\n".join(levels) + "\n")  # 10**10 values once expanded
    started = time.monotonic()
    error = load_error(path)
    assert time.monotonic() - started < 1
    assert "more than 100000 values once its aliases are expanded" in error.message


def test_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, b"# " + b"x" * MAX_FILE_BYTES + b"\n")
    assert "is larger than 16 MiB; split it" in load_error(path).message


def test_document_over_the_api_servers_limit_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, JOB + "  resources:\n    image: " + "x" * MAX_DOCUMENT_BYTES + "\n")
    assert "a document is larger than 3 MiB" in load_error(path).message


def test_an_error_in_a_later_document_names_it(tmp_path: Path) -> None:
    path = write(tmp_path, JOB + "---\n" + JOB + "  resources: {nodes: 1, nodes: 2}\n")
    error = load_error(path)
    assert error.source.endswith("job.yaml#2")
    assert error.path == "spec.resources.nodes"


def test_byte_order_marks_are_read(tmp_path: Path) -> None:
    assert load_documents(write(tmp_path, b"\xef\xbb\xbf" + JOB.encode(), "utf8.yaml"))[0].body["kind"] == "PretrainJob"
    assert load_documents(write(tmp_path, JOB.encode("utf-16"), "utf16.yaml"))[0].body["kind"] == "PretrainJob"


def test_unreadable_path_is_an_error_not_a_crash(tmp_path: Path) -> None:
    assert "cannot read the file" in load_error(tmp_path).message


def test_objects_nested_past_pythons_recursion_limit_are_invalid_not_a_crash() -> None:
    """Bodies from the API server skip the loader's limits; parse_job must still answer."""
    deep: object = "x"
    for _ in range(sys.getrecursionlimit() + 100):
        deep = {"a": deep}
    body = {**_body(), "spec": {**_body()["spec"], "resources": {"affinity": deep}}}
    with pytest.raises(InvalidManifest, match="nested too deeply"):
        parse_job(body)


def test_validate_command_answers_every_generated_hostile_file_without_a_traceback(tmp_path: Path) -> None:
    files = [
        write(tmp_path, "nodes: " + "[" * 100_000, "deep.yaml"),
        write(
            tmp_path, "a: &a [" + ", ".join(["x"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 1000) + "]\n", "wide.yaml"
        ),
        write(tmp_path, b"\xff\xfe\x00", "binary.yaml"),
        write(tmp_path, JOB.replace("kind: PretrainJob", "kind: [PretrainJob]"), "kind.yaml"),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "forgeline.cli.main", "validate", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert all(line.startswith("error: ") for line in lines[:-1]), result.stderr
    assert lines[-1] == f"{len(lines) - 1} error(s) in 4 file(s)"
