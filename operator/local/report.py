"""The end of a local run: a summary table on stdout, and report.json plus PNG plots in the workdir."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The metric that says whether a stage did its job, in order of preference.
KEY_METRICS = {
    "pretrain": ("eval_loss", "final_loss", "loss"),
    "reward": ("eval_accuracy", "accuracy"),
    "rlhf": ("reward_after", "reward_lift", "mean_reward"),
    "lora": ("eval_loss", "final_loss", "loss"),
}


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
        for name in KEY_METRICS.get(self.stage, ()):
            value = self.metrics.get(name)
            if isinstance(value, int | float):
                return f"{name}={value:.4g}"
        return self.reason[:40] if self.reason else "-"


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
            ax.set_ylabel("loss")
        fig.tight_layout()
        fig.savefig(workdir / "loss.png", dpi=90)
        plt.close(fig)
    pairs = [(r, k[: -len("_before")]) for r in records for k in r.metrics if k.endswith("_before")
             and f"{k[: -len('_before')]}_after" in r.metrics]  # fmt: skip
    if pairs:
        fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(pairs), 3.2))
        labels, before, after = [], [], []
        for r, base in pairs:
            labels.append(f"{r.name}\n{base}")
            before.append(float(r.metrics[f"{base}_before"]))
            after.append(float(r.metrics[f"{base}_after"]))
        xs = range(len(pairs))
        ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before")
        ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after")
        ax.set_xticks(list(xs), labels)
        ax.legend()
        fig.tight_layout()
        fig.savefig(workdir / "reward.png", dpi=90)
        plt.close(fig)
    return path
