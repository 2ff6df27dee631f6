"""spec.runPolicy.suspend: suspending deletes the attempt's pods and keeps status; resuming starts a
new attempt (a fresh gang, a fresh rendezvous) that resumes from the latest checkpoint. Neither
counts as a restart. A finished job ignores suspend.
"""

from __future__ import annotations

from typing import Literal

Action = Literal["none", "suspend", "resume", "stay-suspended"]


def suspend_action(requested: bool, currently_suspended: bool, finished: bool) -> Action:
    if finished:
        return "none"
    if requested:
        return "stay-suspended" if currently_suspended else "suspend"
    return "resume" if currently_suspended else "none"
