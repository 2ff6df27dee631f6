"""The Dockerfiles, without a Docker engine: what they install and run exists in the project, they
run as the non-root users the chart and the rendered pods expect, and the operator image has no torch."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from chart.helmkit import CHART, REPO, minimal_job_body

IMAGES = REPO / "images"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def last(dockerfile: Path, op: str) -> str:
    found = [rest for o, rest in instructions(dockerfile) if o == op]
    assert found, f"{dockerfile} has no {op}"
    return found[-1]


def exec_form(value: str) -> list[str]:
    assert value.startswith("["), f"use the exec form, not a shell: {value}"
    return list(yaml.safe_load(value))


def installed_extras(dockerfile: Path) -> set[str]:
    runs = " ".join(rest for op, rest in instructions(dockerfile) if op == "RUN")
    return {e for group in re.findall(r"\"\.\[([a-z,]+)\]\"", runs) for e in group.split(",")}


def arg_default(dockerfile: Path, name: str) -> str:
    for op, rest in instructions(dockerfile):
        if op == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"{dockerfile}: no ARG {name}")


def final_user(dockerfile: Path) -> tuple[int, int]:
    user, _, group = last(dockerfile, "USER").partition(":")
    assert user.isdigit() and group.isdigit(), "a numeric USER, so runAsNonRoot can verify it"
    return int(user), int(group)


@pytest.mark.parametrize("image", ["operator", "trainer"])
def test_images_install_extras_that_exist_and_copy_what_pyproject_packages(image: str) -> None:
    dockerfile = IMAGES / image / "Dockerfile"
    extras = installed_extras(dockerfile)
    assert extras == {image if image == "operator" else "train"}
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])
    copied = {
        shlex.split(rest)[0].rstrip("/")
        for op, rest in instructions(dockerfile)
        if op == "COPY" and "--from" not in rest
    }
    package_dirs = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs | {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied | {
        c for rest in (r for o, r in instructions(dockerfile) if o == "COPY") for c in shlex.split(rest)[:-1]
    }
    ignore = (IMAGES / image / "Dockerfile.dockerignore").read_text().splitlines()
    for path in package_dirs | {"pyproject.toml", "README.md"}:
        assert f"!{path}/" in ignore or f"!{path}" in ignore, f"{path} is excluded from the build context"


def test_operator_image_is_slim_python_without_torch_and_runs_forgeline_operator() -> None:
    dockerfile = IMAGES / "operator" / "Dockerfile"
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", arg_default(dockerfile, "PYTHON_IMAGE"))
    operator_deps = " ".join(
        PYPROJECT["project"]["optional-dependencies"]["operator"] + PYPROJECT["project"]["dependencies"]
    )
    assert "torch" not in operator_deps
    command = exec_form(last(dockerfile, "ENTRYPOINT")) + exec_form(last(dockerfile, "CMD"))
    assert command == ["forgeline", "operator"]
    script = PYPROJECT["project"]["scripts"]["forgeline"]
    assert script == "forgeline.cli.main:main"
    from forgeline.cli.main import build_parser

    assert build_parser().parse_args(["operator"]).func.__name__ == "_operator"


def test_operator_image_user_matches_the_chart_and_pod_security() -> None:
    uid, gid = final_user(IMAGES / "operator" / "Dockerfile")
    assert uid != 0 and gid != 0
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert (values["podSecurityContext"]["runAsUser"], values["podSecurityContext"]["runAsGroup"]) == (uid, gid)
    exposed = {int(p) for p in last(IMAGES / "operator" / "Dockerfile", "EXPOSE").split()}
    assert exposed == {values["ports"]["metrics"], values["ports"]["liveness"]}


def test_trainer_image_is_cuda_pytorch_with_the_pinned_torch_and_runs_the_launcher() -> None:
    dockerfile = IMAGES / "trainer" / "Dockerfile"
    base = arg_default(dockerfile, "BASE_IMAGE")
    assert base.startswith("pytorch/pytorch:") and "cuda" in base
    pinned = next(d for d in PYPROJECT["project"]["optional-dependencies"]["train"] if d.startswith("torch=="))
    assert base.split(":")[1].startswith(pinned.split("==")[1] + "-"), "the base's torch must equal the pin"
    from forgeline.operator.render import CONTAINER, RenderSettings

    entrypoint = exec_form(last(dockerfile, "ENTRYPOINT"))
    assert entrypoint == [RenderSettings().python, "-m", "forgeline.jobs.launch"]
    assert (REPO / "jobs" / "launch.py").is_file()
    assert CONTAINER == "trainer"


def test_trainer_image_user_matches_the_rendered_pod_security_context() -> None:
    from forgeline.api.validate import parse_job
    from forgeline.operator.render import Owner, RenderSettings, render_pod_template

    job = parse_job(minimal_job_body())
    pod = render_pod_template(job, Owner(uid="u"), 1, RenderSettings())["spec"]["securityContext"]
    assert final_user(IMAGES / "trainer" / "Dockerfile") == (pod["runAsUser"], pod["runAsGroup"])
    exposed = {int(p) for p in last(IMAGES / "trainer" / "Dockerfile", "EXPOSE").split()}
    assert {29500, RenderSettings().metrics_port} == exposed
