"""`forgeline status` renders a namespace's jobs as a pipeline tree."""

from __future__ import annotations

from pathlib import Path

from testbed.builders import condition, with_status

from forgeline.api.manifests import load_documents
from forgeline.cli.status import render_tree

EXAMPLE = Path(__file__).parents[2] / "examples" / "pipeline.yaml"


def test_pipeline_tree_shows_each_stage_under_its_input_with_state_progress_and_output() -> None:
    docs = {d.body["kind"]: d.body for d in load_documents(EXAMPLE)}
    objects = [
        with_status(
            docs["PretrainJob"],
            {
                "state": "Succeeded",
                "progress": {"summary": "300/300 (100%)"},
                "output": {"uri": "s3://store/base", "digest": "sha256:" + "ab" * 32},
            },
        ),
        with_status(
            docs["RewardModelJob"], {"state": "Running", "restarts": 1, "progress": {"summary": "75/150 (50%)"}}
        ),
        with_status(
            docs["RLHFJob"],
            {
                "state": "Waiting",
                "conditions": [
                    condition("InputsReady", "WaitingForUpstream", "False", "RewardModelJob/judge is Running")
                ],
            },
        ),
        docs["LoRAJob"],
    ]
    text = render_tree(objects)
    lines = text.splitlines()
    assert lines[0].split() == ["JOB", "STATE", "PROGRESS", "AGE", "OUTPUT", "/", "CAUSE"]
    assert lines[1].startswith("PretrainJob/base ")
    assert "Succeeded" in lines[1] and "300/300 (100%)" in lines[1] and "sha256:abababababab" in lines[1]
    assert any(line.startswith("└─ RewardModelJob/judge") for line in lines), text
    rlhf = next(line for line in lines if "RLHFJob/aligned" in line)
    assert rlhf.startswith("   └─ RLHFJob/aligned"), text
    assert "(+ PretrainJob/base)" in rlhf
    assert "WaitingForUpstream: RewardModelJob/judge is Running" in rlhf
    assert "Running (1 restarts)" in text
    assert any("LoRAJob/tuned" in line and "Pending" in line for line in lines)


def test_empty_namespace() -> None:
    assert render_tree([]) == "no forgeline jobs"
