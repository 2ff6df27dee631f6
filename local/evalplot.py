"""The EvalJob's part of a local run's report: a comparison table on stdout and eval.png.

Both read the EvalJob's committed results.json (the artifact, not the compact metrics: the table
needs every standard error and the best-of-N curve). Only a file:// output can be read here; an
EvalJob that wrote to S3 shows its compact metrics in the summary table only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forgeline.local.report import StageRecord


def eval_results(record: StageRecord) -> dict[str, Any] | None:
    """The committed results.json of a finished EvalJob, if it can be read from here."""
    if record.stage != "eval" or record.state not in ("Succeeded", "Skipped"):
        return None
    if not record.output.startswith("file://"):
        return None
    path = Path(record.output.removeprefix("file://")) / "results.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def model_names(results: dict[str, Any]) -> list[str]:
    """The models in the spec's order (results.json's objects are sorted by key)."""
    names = [n for n in results["config"].get("models") or [] if n in results["models"]]
    return names or list(results["models"])


def _pm(estimate: dict[str, Any] | None, digits: int = 3) -> str:
    if not estimate:
        return "-"
    return f"{estimate['mean']:.{digits}f} ± {estimate['se']:.{digits}f}"


def comparison_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    best_of = [str(n) for n in results["config"]["bestOfN"]]
    rows: list[tuple[str, ...]] = [
        ("MODEL", "WIN RATE", "RATING", "RM SCORE", "TRUE REWARD", "LOSS", f"BEST-OF-{'/'.join(best_of)}")
    ]
    for name in model_names(results):
        m = results["models"][name]
        curve = "/".join(f"{m['bestOfN'][n]['mean']:.2f}" for n in best_of) if "bestOfN" in m else "-"
        rows.append(
            (
                name,
                _pm(m.get("winRate")),
                _pm(m.get("rating"), 0),
                _pm(m.get("rmScore")),
                _pm(m.get("trueReward")),
                _pm(m.get("heldOutLoss")),
                curve,
            )
        )
    return rows


def print_eval_summary(records: Sequence[StageRecord]) -> None:
    for record in records:
        results = eval_results(record)
        if results is None:
            continue
        accuracy = (results.get("judge") or {}).get("preferenceAccuracy")
        judge = f", judge accuracy {_pm(accuracy)}" if accuracy else ""
        print(
            f"\n{record.kind}/{record.name}: {results['data']['prompts']} held-out prompts x "
            f"{results['config']['samplesPerPrompt']} samples, baseline {results['config']['baseline']}{judge}"
        )
        rows = comparison_rows(results)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def write_eval_plot(records: Sequence[StageRecord], workdir: Path) -> Path | None:
    """eval.png: win rates against the baseline, the rating table and the best-of-N curves (None: nothing
    to draw)."""
    # Only EvalJobs with a judge: without one there are no win rates, ratings or best-of-N to draw.
    found = [
        (r, res)
        for r in records
        if (res := eval_results(r)) is not None and any("winRate" in m for m in res["models"].values())
    ]
    if not found:
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(found), 3, figsize=(13, 3.6 * len(found)), squeeze=False)
    for (record, results), (win_ax, table_ax, curve_ax) in zip(found, axes, strict=True):
        models = results["models"]
        names = model_names(results)
        baseline = results["config"]["baseline"]
        judged = [n for n in names if "winRate" in models[n]]
        win_ax.bar(
            judged,
            [models[n]["winRate"]["mean"] for n in judged],
            yerr=[models[n]["winRate"]["se"] for n in judged],
            color=["tab:gray" if n == baseline else "tab:blue" for n in judged],
        )
        win_ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--")
        win_ax.set_ylim(0, 1)
        win_ax.set_title(f"{record.name}: win rate vs {baseline} (± SE)")
        table_ax.axis("off")
        # The true reward beside the RM score (synthetic data): reward hacking is RM up, true reward flat.
        cells = [
            [n, _pm(models[n].get("rating"), 0), _pm(models[n].get("rmScore"), 2), _pm(models[n].get("trueReward"), 2)]
            for n in names
        ]
        labels = ["model", "rating", "RM score", "true reward"]
        table = table_ax.table(cellText=cells, colLabels=labels, loc="center")
        table.scale(1, 1.4)
        table_ax.set_title("Bradley-Terry rating (baseline 1000)")
        best_of = results["config"]["bestOfN"]
        for n in judged:
            curve = models[n]["bestOfN"]
            curve_ax.errorbar(
                best_of,
                [curve[str(k)]["mean"] for k in best_of],
                yerr=[curve[str(k)]["se"] for k in best_of],
                marker="o",
                capsize=3,
                label=n,
            )
        curve_ax.set_xscale("log", base=2)
        curve_ax.set_xticks(best_of, [str(k) for k in best_of])
        curve_ax.set_xlabel("N (samples, best kept by the judge)")
        curve_ax.set_ylabel("RM score")
        curve_ax.set_title("best-of-N")
        if judged:
            curve_ax.legend(fontsize="small")
    fig.tight_layout()
    path = workdir / "eval.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
