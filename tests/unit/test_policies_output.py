"""status.output from rank 0's termination message."""

from __future__ import annotations

import json
from typing import Any

import pytest
from testbed.builders import pod

from forgeline.jobs.errors import EXIT_BAD_CONFIG
from forgeline.operator.policies.output import output_from_pods

DEFAULT = "s3://store/ns/pretrainjob/base"


def finished(index: int, message: str) -> dict[str, Any]:
    """Pod `index` of a gang that exited 0, leaving `message` as its termination message."""
    return pod(index, "Succeeded", exit_code=0, message=message)


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
            [finished(1, ""), finished(0, RESULT)],
            {
                "uri": "s3://elsewhere/base",
                "digest": "sha256:" + "ab" * 32,
                "metrics": {"final_loss": 1.25, "steps": 6.0},
            },
        ),
        ([finished(0, "")], {"uri": DEFAULT}),
        ([finished(0, "Traceback ... log tail")], {"uri": DEFAULT}),
        ([finished(1, RESULT)], {"uri": DEFAULT}),  # only rank 0 speaks for the gang
        ([], {"uri": DEFAULT}),
        ([finished(0, json.dumps({"error": "bad config", "exit_code": EXIT_BAD_CONFIG}))], {"uri": DEFAULT}),
    ],
)
def test_output_from_rank_zero(pods: list[Any], expected: dict[str, Any]) -> None:
    assert output_from_pods(DEFAULT, pods) == expected
