"""The end of a local run: a summary table on stdout, and report.json plus PNG plots in the workdir.

The curves come from the stage's own progress events, which the runner appends to
`<workdir>/stages/<stage>/events.jsonl` as they arrive, each tagged with the config fingerprint. So
a stage interrupted and resumed (in this run or an earlier one) keeps its whole curve: the
events of the same config are replayed by step, later ones winning (a resume replays the steps
after its checkpoint). A skipped rerun reads the same file, and the committed manifest's metrics
(its `eval_history` when the events are gone).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forgeline.local.evalplot import print_eval_summary, write_eval_plot

# The metric that says whether a stage did its job: (label, value before training, after).
KEY_METRICS = {
    "pretrain": ("eval loss", "eval_loss_initial", "eval_loss_final"),
    "reward": ("eval accuracy", "eval_accuracy_initial", "eval_accuracy_final"),
    "rlhf": ("reward", "eval_before_reward", "eval_after_reward"),
    "lora": ("eval loss", "eval_loss_initial", "eval_loss_final"),
}
# DPO (an RLHFJob with algorithm dpo) has no reward model: its key metric is held-out preference accuracy.
DPO_KEY_METRIC = ("preference accuracy", "eval_before_preference_accuracy", "eval_after_preference_accuracy")
# What each stage's curve plots: RL losses say little (RLOO's is ~0 by construction); reward does.
CURVE_METRIC = {"rlhf": "reward"}
# RLHF's held-out evaluation before and after, plotted side by side (with standard errors). Each
# panel is drawn for the stages that have it: real data has no hidden reward, DPO no reward model.
REWARD_PLOTS = (
    ("reward", "reward model score"),
    ("true_reward", "hidden true reward"),
    ("preference_accuracy", "held-out preference accuracy"),
)
EVENTS_FILE = "events.jsonl"


def curve_metric(stage: str, algorithm: str | None = None) -> str:
    """What a stage's curve and progress line show: RLOO/GRPO the reward, DPO and the rest the loss."""
    return "loss" if algorithm == "dpo" else CURVE_METRIC.get(stage, "loss")


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
    eval_curve: list[tuple[int, float]] = field(default_factory=list)
    # Lineage: role -> {"uri", "digest"} of each input the stage read (plain HF directories included).
    inputs: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def key_metric(self) -> str:
        if self.stage in KEY_METRICS:
            label, before, after = DPO_KEY_METRIC if self.metrics.get("algorithm") == "dpo" else KEY_METRICS[self.stage]
            if isinstance(self.metrics.get(after), int | float):
                start = self.metrics.get(before)
                start_text = f"{start:.3g} -> " if isinstance(start, int | float) else ""
                return f"{label} {start_text}{self.metrics[after]:.3g}"
        return self.reason[:40] if self.reason else "-"


def curve_point(stage: str, event: dict[str, Any], metric: str | None = None) -> tuple[int, float] | None:
    """The (step, value) a progress event adds to the stage's curve, if it has one."""
    if event.get("event") != "progress":
        return None
    metric = metric or curve_metric(stage)
    value = event.get(metric, (event.get("metrics") or {}).get(metric))
    return (int(event["step"]), float(value)) if isinstance(value, int | float) else None


def eval_key(metric: str) -> str:
    """The held-out counterpart of a curve: eval_loss, or for RLOO/GRPO (whose curve is the reward) eval_reward."""
    return "eval_reward" if metric == "reward" else "eval_loss"


def eval_point(event: dict[str, Any], key: str = "eval_loss") -> tuple[int, float] | None:
    """The (step, held-out value) of a progress event that carries an evaluation (before, during, after)."""
    if event.get("event") != "progress":
        return None
    metrics = event.get("metrics") or {}
    for name in (key, f"{key}_initial", key.replace("eval_", "eval_before_", 1)):
        if isinstance(metrics.get(name), int | float):
            return int(event["step"]), float(metrics[name])
    return None


def append_event(path: Path, fingerprint: str, event: dict[str, Any]) -> None:
    """Persist one progress event of a stage, tagged with the config that produced it."""
    if event.get("event") == "progress":
        with path.open("a") as fh:
            fh.write(json.dumps({"fingerprint": fingerprint, **event}, default=str) + "\n")


def read_events(path: Path, fingerprint: str) -> list[dict[str, Any]]:
    """The persisted events of this config, oldest first (a torn last line from a kill is skipped)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("fingerprint") == fingerprint:
            events.append(event)
    return events


def by_step(points: Iterable[tuple[int, float] | None]) -> list[tuple[int, float]]:
    """One value per step, the latest seen winning (a resume replays the steps after its checkpoint)."""
    latest = {p[0]: p[1] for p in points if p is not None}
    return sorted(latest.items())


def restore_curves(record: StageRecord, events: list[dict[str, Any]], metric: str) -> None:
    """The record's training and eval curves from its persisted events and its metrics' eval_history."""
    key = eval_key(metric)
    record.curve = by_step(curve_point(record.stage, e, metric) for e in events)
    history = record.metrics.get("eval_history") or []
    committed = [
        (int(h["step"]), float(h[key])) for h in history if isinstance(h, dict) and isinstance(h.get(key), int | float)
    ]
    record.eval_curve = by_step([*committed, *(eval_point(e, key) for e in events)])


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
        for role, ref in r.inputs.items():
            digest = (ref.get("digest") or "").removeprefix("sha256:")[:12]
            print(f"{r.kind}/{r.name} {role}: {ref['uri']}" + (f" sha256:{digest}" if digest else ""))
    for r in records:
        if r.state == "Failed":
            print(f"{r.kind}/{r.name} failed: {r.reason}")
    print_eval_summary(records)  # an EvalJob's comparison table


def has_before_after(record: StageRecord, metric: str) -> bool:
    return all(isinstance(record.metrics.get(f"eval_{w}_{metric}"), int | float) for w in ("before", "after"))


def write_report(records: list[StageRecord], workdir: Path) -> Path:
    """report.json, loss.png (every stage's training curve, with its eval loss) and reward.png (RLHF
    before/after: the reward model's score, and the hidden reward or preference accuracy where known)."""
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
            metric = curve_metric(r.stage, r.metrics.get("algorithm"))
            steps, ys = zip(*r.curve, strict=True)
            ax.plot(steps, ys, label=f"train {metric}")
            if r.eval_curve:
                steps, ys = zip(*r.eval_curve, strict=True)
                ax.plot(steps, ys, marker="o", label=eval_key(metric).replace("_", " "))
                ax.legend(fontsize="small")
            ax.set_title(f"{r.kind}/{r.name}")
            ax.set_xlabel("step")
            ax.set_ylabel(metric)
        fig.tight_layout()
        fig.savefig(workdir / "loss.png", dpi=90)
        plt.close(fig)
    panels = [(m, title, [r for r in records if has_before_after(r, m)]) for m, title in REWARD_PLOTS]
    panels = [p for p in panels if p[2]]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
        for ax, (metric, title, rlhf) in zip(axes[0], panels, strict=True):
            for i, r in enumerate(rlhf):
                values = [float(r.metrics[f"eval_{when}_{metric}"]) for when in ("before", "after")]
                errors = [float(r.metrics.get(f"eval_{when}_{metric}_se", 0.0)) for when in ("before", "after")]
                ax.bar([i - 0.2, i + 0.2], values, width=0.4, yerr=errors, color=["tab:gray", "tab:blue"])
            ax.set_xticks(range(len(rlhf)), [f"{r.name}\nbefore | after" for r in rlhf])
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(workdir / "reward.png", dpi=90)
        plt.close(fig)
    write_eval_plot(records, workdir)  # eval.png: win rates, ratings, best-of-N
    return path
