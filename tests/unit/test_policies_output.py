"""status.output from rank 0's termination message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forgeline.operator.policies.output import output_from_pods

DEFAULT = "s3://store/ns/pretrainjob/base"


def pod(index: int, message: str) -> dict[str, Any]:
    term = {"exitCode": 0, "reason": "Completed", "message": message}
    return {
        "metadata": {"name": f"p-{index}", "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {"terminated": term}}]},
    }


RESULT = json.dumps(
    {
        "output_uri": "s3://elsewhere/base",
        "manifest_sha256": "ab" * 32,
        "metrics": {"final_loss": 1.25, "steps": 6, "note": "x", "flag": True},
    }
)


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        (
            [pod(1, ""), pod(0, RESULT)],
            {
                "uri": "s3://elsewhere/base",
                "digest": "sha256:" + "ab" * 32,
                "metrics": {"final_loss": 1.25, "steps": 6.0},
            },
        ),
        ([pod(0, "")], {"uri": DEFAULT}),
        ([pod(0, "Traceback ... log tail")], {"uri": DEFAULT}),
        ([pod(1, RESULT)], {"uri": DEFAULT}),  # only rank 0 speaks for the gang
        ([], {"uri": DEFAULT}),
        ([pod(0, json.dumps({"error": "bad config", "exit_code": 2}))], {"uri": DEFAULT}),
    ],
)
def test_output_from_rank_zero(pods: list[Any], expected: dict[str, Any]) -> None:
    assert output_from_pods(DEFAULT, pods) == expected
