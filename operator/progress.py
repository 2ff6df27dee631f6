"""Progress from rank 0's Prometheus endpoint -> status.progress (pure).

The trainer exports forgeline_train_{step,total_steps,loss,tokens_total} (forgeline.jobs.metrics).
Loss curves belong in Prometheus; status gets a coarse summary for `kubectl get`, refreshed at
most every 15 s so status writes stay rare.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_progress(text: str, now: datetime, previous: tuple[float, float] | None) -> tuple[Obj, tuple[float, float]]:
    """Rank 0's /metrics -> status.progress; `previous` is (tokens, monotonic time) of the last scrape."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            try:
                values[match.group(1)] = float(match.group(3))
            except ValueError:
                continue
    step = int(values.get("forgeline_train_step", 0))
    total = values.get("forgeline_train_total_steps")
    progress: Obj = {"step": step, "updated": rfc3339(now)}
    if total:
        progress["total"] = int(total)
        progress["summary"] = f"{step}/{int(total)} ({100 * step // max(int(total), 1)}%)"
    else:
        progress["summary"] = f"step {step}"
    if "forgeline_train_loss" in values:
        progress["loss"] = round(values["forgeline_train_loss"], 6)
    if "forgeline_eval_loss" in values:
        progress["evalLoss"] = round(values["forgeline_eval_loss"], 6)
    tokens = values.get("forgeline_train_tokens_total", 0.0)
    clock = time.monotonic()
    if previous is not None and clock > previous[1] and tokens >= previous[0]:
        progress["tokensPerSecond"] = round((tokens - previous[0]) / (clock - previous[1]), 3)
    return progress, (tokens, clock)
