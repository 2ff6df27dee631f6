"""activeDeadlineSeconds, ttlSecondsAfterFinished and suspend, table-driven."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from testbed.builders import T0

from forgeline.operator.policies.deadline import check_active_deadline
from forgeline.operator.policies.suspend import suspend_action
from forgeline.operator.policies.ttl import check_ttl


@pytest.mark.parametrize(
    ("start", "elapsed", "limit", "exceeded", "left"),
    [
        (T0, 10, None, False, None),
        (None, 10, 5, False, None),
        (T0, 4, 5, False, 1.0),
        (T0, 5, 5, True, 0.0),
        (T0, 500, 5, True, 0.0),
    ],
)
def test_active_deadline(
    start: datetime | None, elapsed: int, limit: int | None, exceeded: bool, left: float | None
) -> None:
    verdict = check_active_deadline(start, T0 + timedelta(seconds=elapsed), limit)
    assert verdict.exceeded is exceeded
    assert verdict.seconds_left == left
    if exceeded:
        assert f"activeDeadlineSeconds ({limit}s)" in verdict.message


@pytest.mark.parametrize(
    ("completed", "elapsed", "ttl", "delete", "left"),
    [
        (None, 100, 10, False, None),
        (T0, 100, None, False, None),
        (T0, 3, 10, False, 7.0),
        (T0, 10, 10, True, 0.0),
        (T0, 0, 0, True, 0.0),
    ],
)
def test_ttl_after_finished(
    completed: datetime | None, elapsed: int, ttl: int | None, delete: bool, left: float | None
) -> None:
    verdict = check_ttl(completed, T0 + timedelta(seconds=elapsed), ttl)
    assert (verdict.delete_now, verdict.seconds_left) == (delete, left)


@pytest.mark.parametrize(
    ("requested", "suspended", "finished", "action"),
    [
        (False, False, False, "none"),
        (True, False, False, "suspend"),
        (True, True, False, "stay-suspended"),
        (False, True, False, "resume"),
        (True, False, True, "none"),
        (False, True, True, "none"),
    ],
)
def test_suspend_action(requested: bool, suspended: bool, finished: bool, action: str) -> None:
    assert suspend_action(requested, suspended, finished) == action
