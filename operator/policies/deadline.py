"""activeDeadlineSeconds: the whole job (every attempt together) must finish within it.

Counted from status.startTime, which the first attempt sets and a resume after suspend resets (as
batch/v1 does), so a job parked in Suspended is not failed for the time it was parked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class DeadlineVerdict:
    exceeded: bool
    seconds_left: float | None
    message: str = ""


def check_active_deadline(start_time: datetime | None, now: datetime, limit: int | None) -> DeadlineVerdict:
    if limit is None or start_time is None:
        return DeadlineVerdict(False, None)
    elapsed = (now - start_time).total_seconds()
    if elapsed >= limit:
        return DeadlineVerdict(True, 0.0, f"running for {int(elapsed)}s, over activeDeadlineSeconds ({limit}s)")
    return DeadlineVerdict(False, limit - elapsed)
