"""Quality gates: a stage starts only if an EvalJob's recorded result meets a condition.

`spec.gate = {evalJob, condition}`. The condition language is deliberately tiny, parsed here and
never handed to eval():

    condition := metric OP (number | metric)        OP: >= > <= <
    metric    := winRate(model, model) | rating(model) | rmScore(model) | trueReward(model)

e.g. `winRate(aligned, base) >= 0.6`, `rating(aligned) >= 1050`, `rmScore(aligned) > rmScore(base)`.
The whole grammar is one regular expression (`CONDITION`), so the API server refuses a malformed
condition at admission with the same pattern `forgeline validate` uses; arity is part of it.

The gate reads only what the EvalJob recorded in status.output.metrics (`metric_key` names those
entries; forgeline.jobs.eval writes them): win rates are recorded against the EvalJob's baseline,
so `winRate(a, b)` needs b (or a) to be that baseline. Evaluation is pure: the operator
(operator/policies/gate.py) and `forgeline run` call `evaluate` on the same inputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import Field

from forgeline.api.fields import ApiModel, JobName

# Metric -> number of model names it takes.
METRICS = {"winRate": 2, "rating": 1, "rmScore": 1, "trueReward": 1}
_NAME = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_ONE = rf"(rating|rmScore|trueReward)\( *{_NAME} *\)"
_TWO = rf"winRate\( *{_NAME} *, *{_NAME} *\)"
_METRIC = rf"({_ONE}|{_TWO})"
_NUMBER = r"-?[0-9]+(\.[0-9]+)?"
CONDITION = rf"^ *{_METRIC} *(>=|<=|>|<) *({_NUMBER}|{_METRIC}) *$"

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}
_TOKEN = re.compile(
    r" *(?:(?P<metric>[a-zA-Z]+)\((?P<args>[^)]*)\)|(?P<op>>=|<=|>|<)|(?P<number>-?[0-9]+(?:\.[0-9]+)?))"
)


def metric_key(metric: str, model: str) -> str:
    """The status.output.metrics entry of one model's metric (win rates: against the baseline)."""
    return f"{metric}.{model}"


class Gate(ApiModel):
    """Start this stage only if an EvalJob's result meets a condition."""

    eval_job: JobName = Field(
        description="name of the EvalJob in this namespace whose result decides; this job waits until it succeeds"
    )
    condition: str = Field(
        min_length=1,
        max_length=256,
        pattern=CONDITION,
        description="metric OP (number | metric), OP one of >= > <= <; metrics: winRate(model, model) (the second "
        "or the first the EvalJob's baseline), rating(model), rmScore(model), trueReward(model); e.g. "
        "'winRate(aligned, base) >= 0.6'; false: the job fails with reason GateFailed",
    )


@dataclass(frozen=True)
class MetricRef:
    metric: str
    models: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.metric}({', '.join(self.models)})"


@dataclass(frozen=True)
class Condition:
    left: MetricRef
    op: str
    right: MetricRef | float

    def __str__(self) -> str:
        right = self.right if isinstance(self.right, MetricRef) else f"{self.right:g}"
        return f"{self.left} {self.op} {right}"


class GateError(ValueError):
    """A condition that cannot be evaluated against this EvalJob's result (an unknown model...)."""


def parse_condition(text: str) -> Condition:
    """Parse a condition (raises GateError saying what is wrong)."""
    if not re.fullmatch(CONDITION, text):
        raise GateError(
            f"{text!r} is not a condition: write metric OP number|metric, e.g. 'winRate(aligned, base) >= 0.6' "
            f"(metrics: {', '.join(METRICS)}; OP: >= > <= <)"
        )
    parts: list[MetricRef | str | float] = []
    for m in _TOKEN.finditer(text):
        if m.group("metric"):
            parts.append(MetricRef(m.group("metric"), tuple(a.strip() for a in m.group("args").split(","))))
        elif m.group("op"):
            parts.append(m.group("op"))
        elif m.group("number"):
            parts.append(float(m.group("number")))
    left, op, right = parts  # the pattern admits exactly these three
    assert isinstance(left, MetricRef) and isinstance(op, str) and not isinstance(right, str)
    return Condition(left, op, right)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    message: str  # the measured values, for the condition's message


def measure(ref: MetricRef, metrics: Mapping[str, float], baseline: str) -> float:
    """A metric's value from an EvalJob's recorded metrics; GateError if it was not recorded."""
    if ref.metric == "winRate":
        a, b = ref.models
        if a == b:
            return 0.5
        if b == baseline:
            return _recorded(metrics, metric_key("winRate", a), ref)
        if a == baseline:
            return 1.0 - _recorded(metrics, metric_key("winRate", b), ref)
        raise GateError(f"{ref}: win rates are recorded against the EvalJob's baseline ({baseline}) only")
    return _recorded(metrics, metric_key(ref.metric, ref.models[0]), ref)


def _recorded(metrics: Mapping[str, float], key: str, ref: MetricRef) -> float:
    value = metrics.get(key)
    if value is None or not math.isfinite(value):
        have = sorted({k.split(".", 1)[1] for k in metrics if "." in k})
        raise GateError(f"{ref}: the EvalJob recorded no {key} (its models: {', '.join(have) or 'none'})")
    return float(value)


def evaluate(condition: Condition, metrics: Mapping[str, float], baseline: str) -> GateResult:
    """Whether the EvalJob's result meets the condition, with the measured values in words."""
    left = measure(condition.left, metrics, baseline)
    if isinstance(condition.right, MetricRef):
        right = measure(condition.right, metrics, baseline)
        measured = f"{condition.left} = {left:.4g}, {condition.right} = {right:.4g}"
    else:
        right = condition.right
        measured = f"{condition.left} = {left:.4g}"
    passed = _OPS[condition.op](left, right)
    verdict = "holds" if passed else "does not hold"
    return GateResult(passed, f"{condition} {verdict}: {measured}")


def check(gate: Gate, metrics: Mapping[str, float], baseline: str) -> GateResult:
    """The gate's verdict on an EvalJob's recorded metrics; a condition that cannot be evaluated
    (a model the EvalJob does not have) fails the gate, saying why."""
    try:
        result = evaluate(parse_condition(gate.condition), metrics, baseline)
    except GateError as exc:
        return GateResult(False, f"spec.gate.condition: {exc}")
    return GateResult(result.passed, f"EvalJob/{gate.eval_job}: {result.message}")


JUDGED_METRICS = ("winRate", "rating", "rmScore")  # recorded only when the EvalJob has a rewardModel


def condition_problems(condition: str, *, models: list[str], baseline: str, judged: bool, synthetic: bool) -> list[str]:
    """What an EvalJob (its model names, baseline, whether it has a judge and synthetic data) could
    never record of a condition: checked offline, where the EvalJob is in the same file."""
    try:
        parsed = parse_condition(condition)
    except GateError as exc:
        return [str(exc)]
    problems = []
    for ref in (parsed.left, parsed.right):
        if not isinstance(ref, MetricRef):
            continue
        unknown = [n for n in ref.models if n not in models]
        if unknown:
            problems.append(f"{ref}: the EvalJob evaluates no model {unknown[0]!r} (its models: {', '.join(models)})")
        elif ref.metric == "winRate" and baseline not in ref.models and len(set(ref.models)) > 1:
            problems.append(f"{ref}: win rates are recorded against the EvalJob's baseline ({baseline}) only")
        if ref.metric in JUDGED_METRICS and not judged:
            problems.append(f"{ref}: the EvalJob has no rewardModel, so it records no {ref.metric}")
        if ref.metric == "trueReward" and not synthetic:
            problems.append(f"{ref}: the true reward is known for synthetic data only")
    return problems
