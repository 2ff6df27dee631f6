"""Live progress of one stage: step/total, loss, tokens/s and ETA, from the stage's JSON events."""

from __future__ import annotations

import sys
import time
from typing import Any


class ProgressLine:
    """On a terminal one line redrawn in place; elsewhere (CI, a pipe) one line per event."""

    def __init__(self, label: str, metric: str = "loss") -> None:
        self.label = label
        self.metric = metric  # what the line shows: loss, or reward for RLHF (whose loss says little)
        self.tty = sys.stdout.isatty()
        self.first: tuple[float, int] | None = None
        self.drawn = False

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            self._draw(self.render(event, time.monotonic()))
        elif kind == "resumed":
            self._say(f"{self.label}: resumed from checkpoint at step {event.get('step')}")
        elif kind == "checkpoint":
            self._say(f"{self.label}: checkpoint at step {event.get('step')} ({event.get('seconds', 0):.2f}s)")

    def render(self, event: dict[str, Any], now: float) -> str:
        step, total = int(event.get("step", 0)), event.get("total")
        if self.first is None:
            self.first = (now, step)
        parts = [f"{self.label}", f"step {step}/{total}" if total else f"step {step}"]
        value = event.get(self.metric, (event.get("metrics") or {}).get(self.metric))
        if isinstance(value, int | float):
            parts.append(f"{self.metric} {value:.4f}")
        if event.get("tokens_per_s"):
            parts.append(f"{event['tokens_per_s']:,.0f} tok/s")
        t0, s0 = self.first
        if total and step > s0 and now > t0:
            eta = (int(total) - step) / ((step - s0) / (now - t0))
            parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        return "  ".join(parts)

    def _draw(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r\033[K" + text)
            self.drawn = True
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def _say(self, text: str) -> None:
        if self.drawn:
            sys.stdout.write("\n")
            self.drawn = False
        print(text, flush=True)

    def finish(self) -> None:
        if self.drawn:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.drawn = False
