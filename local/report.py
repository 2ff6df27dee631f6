"""The end of a local run: a summary table on stdout, and report.json plus PNG plots in the workdir."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The metric that says whether a stage did its job: (label, value before training, after).
KEY_METRICS = {
    "pretrain": ("eval loss", "eval_loss_initial", "eval_loss_final"),
    "reward": ("eval accuracy", "eval_accuracy_initial", "eval_accuracy_final"),
    "rlhf": ("reward", "eval_before_reward", "eval_after_reward"),
    "lora": ("eval loss", "eval_loss_initial", "eval_loss_final"),
}
# What each stage's curve plots: RL losses say little (RLOO's is ~0 by construction); reward does.
CURVE_METRIC = {"rlhf": "reward"}
# RLHF's held-out evaluation before and after, plotted side by side (with standard errors).
REWARD_PLOTS = (("reward", "reward model score"), ("true_reward", "hidden true reward"))


@dataclass
class StageRecord:
    kind: str
    name: str
    stage: str
    output: str
    state: str = "Pending"
    reason: str = ""
    digest: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    seconds: float = 0.0
    curve: list[tuple[int, float]] = field(default_factory=list)

    def key_metric(self) -> str:
        if self.stage in KEY_METRICS:
            label, before, after = KEY_METRICS[self.stage]
            if isinstance(self.metrics.get(after), int | float):
                start = self.metrics.get(before)
                start_text = f"{start:.3g} -> " if isinstance(start, int | float) else ""
                return f"{label} {start_text}{self.metrics[after]:.3g}"
        return self.reason[:40] if self.reason else "-"


def curve_point(stage: str, event: dict[str, Any]) -> tuple[int, float] | None:
    """The (step, value) a progress event adds to the stage's curve, if it has one."""
    if event.get("event") != "progress":
        return None
    metric = CURVE_METRIC.get(stage, "loss")
    value = event.get(metric, (event.get("metrics") or {}).get(metric))
    return (int(event["step"]), float(value)) if isinstance(value, int | float) else None


def print_summary(records: list[StageRecord], seconds: float) -> None:
    rows = [("STAGE", "STATE", "DURATION", "KEY METRIC", "OUTPUT")]
    for r in records:
        rows.append((f"{r.kind}/{r.name}", r.state, f"{r.seconds:.0f}s", r.key_metric(), r.output))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(
        f"\n{sum(r.state in ('Succeeded', 'Skipped') for r in records)}/{len(records)} stage(s) done in {seconds:.0f}s"
    )
    for r in records:
        if r.state == "Failed":
            print(f"{r.kind}/{r.name} failed: {r.reason}")


def write_report(records: list[StageRecord], workdir: Path) -> Path:
    """report.json, loss.png (every stage's loss curve) and reward.png (RLHF before/after)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "report.json"
    path.write_text(json.dumps({"stages": [asdict(r) for r in records]}, indent=1, default=str))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in records if r.curve]
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
        for ax, r in zip(axes[0], curves, strict=True):
            steps, losses = zip(*r.curve, strict=True)
            ax.plot(steps, losses)
            ax.set_title(f"{r.kind}/{r.name}")
            ax.set_xlabel("step")
            ax.set_ylabel(CURVE_METRIC.get(r.stage, "loss"))
        fig.tight_layout()
        fig.savefig(workdir / "loss.png", dpi=90)
        plt.close(fig)
    rlhf = [r for r in records if all(f"eval_after_{m}" in r.metrics for m, _ in REWARD_PLOTS)]
    if rlhf:
        fig, axes = plt.subplots(1, len(REWARD_PLOTS), figsize=(4 * len(REWARD_PLOTS), 3.2), squeeze=False)
        for ax, (metric, title) in zip(axes[0], REWARD_PLOTS, strict=True):
            for i, r in enumerate(rlhf):
                values = [float(r.metrics[f"eval_{when}_{metric}"]) for when in ("before", "after")]
                errors = [float(r.metrics.get(f"eval_{when}_{metric}_se", 0.0)) for when in ("before", "after")]
                ax.bar([i - 0.2, i + 0.2], values, width=0.4, yerr=errors, color=["tab:gray", "tab:blue"])
            ax.set_xticks(range(len(rlhf)), [f"{r.name}\nbefore | after" for r in rlhf])
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(workdir / "reward.png", dpi=90)
        plt.close(fig)
    return path
