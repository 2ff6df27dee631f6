"""torchx is an optional extra: the operator image and the base install never carry it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def test_torchx_is_its_own_extra_which_only_dev_includes() -> None:
    assert EXTRAS["torchx"] == ["torchx-nightly==2026.10.26"]
    assert "forgeline[operator,local,torchx]" in EXTRAS["dev"]
    for name in ("operator", "train", "local"):
        assert not any("torchx" in dep for dep in EXTRAS[name]), name
    assert not any("torchx" in dep for dep in PYPROJECT["project"]["dependencies"])


def test_the_cli_imports_torchx_only_for_the_torchx_command() -> None:
    code = "import sys, forgeline.cli.main as m; m.build_parser(); print('torchx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
