"""The local report's EvalJob part: the comparison table and eval.png, from a committed results.json."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from forgeline.jobs import evalstats
from forgeline.local.evalplot import print_eval_summary, write_eval_plot
from forgeline.local.report import StageRecord


def eval_record(tmp_path: Path, judged: bool = True) -> StageRecord:
    rng = random.Random(0)
    scores = {
        name: [[rng.gauss(shift, 1.0) for _ in range(4)] for _ in range(20)]
        for name, shift in (("base", 0), ("aligned", 1))
    }
    models: dict[str, dict[str, object]] = {n: {"trueReward": {"mean": 0.1, "se": 0.01, "n": 20}} for n in scores}
    if judged:
        for name, stats in evalstats.compare(scores, "base", [1, 2, 4], bootstrap=10).items():
            models[name].update(stats)
    results = {
        "config": {"baseline": "base", "bestOfN": [1, 2, 4], "samplesPerPrompt": 4},
        "data": {"prompts": 20},
        "judge": {"preferenceAccuracy": {"mean": 0.9, "se": 0.02, "n": 20}} if judged else {},
        "models": models,
    }
    out = tmp_path / "store" / "evaljob" / "compare"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps(results))
    return StageRecord(kind="EvalJob", name="compare", stage="eval", output=out.as_uri(), state="Succeeded")


def test_summary_prints_every_model_with_standard_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    print_eval_summary([eval_record(tmp_path)])
    out = capsys.readouterr().out
    assert "EvalJob/compare: 20 held-out prompts x 4 samples, baseline base, judge accuracy 0.900 ± 0.020" in out
    aligned = next(line for line in out.splitlines() if line.strip().startswith("aligned"))
    assert " ± " in aligned and aligned.count("/") == 2  # the best-of-1/2/4 curve


def test_eval_png_is_written_for_a_judged_eval_job_only(tmp_path: Path) -> None:
    assert write_eval_plot([eval_record(tmp_path)], tmp_path) == tmp_path / "eval.png"
    assert (tmp_path / "eval.png").stat().st_size > 10_000
    unjudged = tmp_path / "unjudged"
    assert write_eval_plot([eval_record(unjudged, judged=False)], unjudged) is None
