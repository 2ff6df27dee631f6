"""The eval stage under torchrun: the RLHF policy against its base, judged by the reward model.

Reuses the session's chained artifacts (pretrain -> reward -> rlhf, tests/jobs/conftest.py) and
evaluates on the RLHF stage's held-out prompts (same synthetic seed and evalFraction).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.conftest import STAGE_TIMEOUT, StageRun, launch_argv, run_stage, stage_env, write_config

pytestmark = pytest.mark.train

BEST_OF = [1, 2, 4, 8]


def local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def eval_config(output_uri: str, models: dict[str, str], rm_uri: str, baseline: str) -> dict[str, Any]:
    return {
        "version": 1,
        "stage": "eval",
        "output_uri": output_uri,
        # The RLHF stage's prompts and held-out share: these prompts were never trained on.
        "data": {"synthetic": {"kind": "prompts", "examples": 2000, "seed": 3}, "eval_fraction": 0.25},
        "training": {"seed": 0},
        "eval": {
            "models": [{"name": n, "uri": u} for n, u in models.items()],
            "baseline": baseline,
            "reward_model": {"uri": rm_uri},
            "best_of_n": BEST_OF,
            "prompts": 48,
            "max_new_tokens": 16,
            "temperature": 1.0,
            "top_p": 1.0,
            "seed": 7,
        },
    }


@pytest.fixture(scope="module")
def evaluated(artifacts: Path, pretrained: StageRun, reward_model: StageRun, rlhf_run: StageRun) -> StageRun:
    models = {"base": pretrained.config["output_uri"], "aligned": rlhf_run.config["output_uri"]}
    cfg = eval_config((artifacts / "eval").as_uri(), models, reward_model.config["output_uri"], "base")
    run = run_stage(artifacts / "work-eval", cfg)
    assert run.rc == 0, run.explain()
    return run


def results(run: StageRun) -> dict[str, Any]:
    return json.loads((local(run.config["output_uri"]) / "results.json").read_text())


def test_aligned_model_beats_base_on_rm_win_rate_by_more_than_3_se(evaluated: StageRun) -> None:
    models = results(evaluated)["models"]
    win = models["aligned"]["winRate"]
    assert win["mean"] - 0.5 > 3 * win["se"], models
    assert models["aligned"]["rating"]["mean"] > 1000.0 == models["base"]["rating"]["mean"]
    assert models["aligned"]["trueReward"]["mean"] > models["base"]["trueReward"]["mean"], "RM gain is not hacking"
    assert evaluated.seconds < STAGE_TIMEOUT


def test_best_of_n_rm_score_rises_with_n(evaluated: StageRun) -> None:
    for name, model in results(evaluated)["models"].items():
        curve = [model["bestOfN"][str(n)]["mean"] for n in BEST_OF]
        assert curve == sorted(curve) and curve[-1] > curve[0] + 3 * model["bestOfN"]["1"]["se"], (name, curve)
        assert model["bestOfN"]["1"]["mean"] == pytest.approx(model["rmScore"]["mean"])


def test_result_metrics_are_the_compact_table_gates_read(evaluated: StageRun) -> None:
    m = evaluated.metrics
    assert m["winRate.base"] == 0.5 and m["rating.base"] == pytest.approx(1000.0)
    assert m["winRate.aligned"] == pytest.approx(results(evaluated)["models"]["aligned"]["winRate"]["mean"])
    assert {"rmScore.aligned", "trueReward.aligned", "prompts", "preferenceAccuracy"} <= set(m)
    assert m["steps"] == 2  # the models evaluated: `kubectl get` shows a finished EvalJob as 2/2
    assert evaluated.termination is not None and evaluated.termination["metrics"] == m


def test_results_record_config_and_input_digests(evaluated: StageRun, pretrained: StageRun) -> None:
    r = results(evaluated)
    assert r["config"]["bestOfN"] == BEST_OF and r["config"]["baseline"] == "base"
    assert r["inputs"]["models.base"]["manifest_sha256"] == pretrained.of("result")[0]["manifest_sha256"]
    assert set(r["inputs"]) == {"models.base", "models.aligned", "judge"}
    assert r["data"]["prompts"] == 48 and r["data"]["digest"].startswith("sha256:")
    assert r["judge"]["preferenceAccuracy"]["mean"] > 0.8
    manifest = json.loads((local(evaluated.config["output_uri"]) / "_MANIFEST.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["results.json"]


def test_results_depend_on_the_seed_not_on_the_world_size(evaluated: StageRun, artifacts: Path) -> None:
    """The same config on one process instead of two: the same samples, scores and statistics."""
    cfg = {**evaluated.config, "output_uri": (artifacts / "eval-one-process").as_uri()}
    path, _ = write_config(artifacts / "work-eval-1", cfg)
    env = stage_env({"FORGELINE_SCRATCH": str(artifacts / "work-eval-1" / "scratch")})
    proc = subprocess.run(
        launch_argv("eval", path, nproc=1), capture_output=True, text=True, env=env, timeout=STAGE_TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((artifacts / "eval-one-process" / "results.json").read_text())
    two = results(evaluated)
    assert one["samples"] == two["samples"]
    for name, model in two["models"].items():
        for stat in ("winRate", "rating", "rmScore", "trueReward"):
            assert one["models"][name][stat] == pytest.approx(model[stat], rel=1e-6), (name, stat)
        curve = {n: e["mean"] for n, e in model["bestOfN"].items()}
        assert {n: e["mean"] for n, e in one["models"][name]["bestOfN"].items()} == pytest.approx(curve, rel=1e-6)
        # Held-out texts are batched per rank: padding differs, so the loss may differ in the last bits.
        assert one["models"][name]["heldOutLoss"]["mean"] == pytest.approx(model["heldOutLoss"]["mean"], rel=1e-4)
