"""Load forgeline outputs where forgeline is not installed: a fresh interpreter that can import only
transformers and peft (tests/testbed/load_outputs.py), as a user on another machine would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def load_in_fresh_process(entries: list[dict[str, str]], workdir: Path) -> dict[str, int]:
    """Run load_outputs.py on the outputs; returns tokens generated per output.

    Each entry: {"path": a local copy of the artifact, "kind": "lm" | "reward", "base": the URI the
    adapter should name, optionally "base_path": a local copy of that base when the URI is remote}.
    Nothing in an output may name a scratch path of the run that made it.
    """
    for entry in entries:
        for path in Path(entry["path"]).rglob("*"):
            if path.is_file() and path.suffix in (".json", ".md", ".jinja"):
                assert "scratch" not in path.read_text(errors="replace"), path
    (workdir / "outputs.json").write_text(json.dumps(entries))
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("load_outputs.py")), str(workdir / "outputs.json")],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
