"""ttlSecondsAfterFinished: a finished job object deletes itself (and, by ownership, its children)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class TtlVerdict:
    delete_now: bool
    seconds_left: float | None


def check_ttl(completion_time: datetime | None, now: datetime, ttl: int | None) -> TtlVerdict:
    if ttl is None or completion_time is None:
        return TtlVerdict(False, None)
    left = ttl - (now - completion_time).total_seconds()
    return TtlVerdict(left <= 0, max(left, 0.0))
