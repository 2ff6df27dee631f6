"""Which series the operator and the trainers export, and which ones a PromQL expression queries:
the chart's alerts and dashboard must only name series that exist (a typo is a silent alert)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left", "group_right"}


def exported_series() -> set[str]:
    """Every series name in the operator's and a trainer's registry (built fresh, not served)."""
    from prometheus_client import CollectorRegistry

    from forgeline.jobs.metrics import StageMetrics
    from forgeline.operator.metrics import OperatorMetrics

    operator = CollectorRegistry()
    OperatorMetrics(registry=operator)
    names: set[str] = set()
    for registry in (operator, StageMetrics("pretrain").registry):
        for family in registry.collect():
            names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    return names


def queried_metrics(exprs: Iterable[str]) -> set[str]:
    names: set[str] = set()
    for expr in exprs:
        text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values
        text = re.sub(r"\{[^}]*\}", "", text)  # matchers
        text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
        text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
        for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
            if match.group(2) or match.group(1) in _KEYWORDS:
                continue  # a function call or an operator
            if re.fullmatch(r"\d+[smhdwy]", match.group(1)):
                continue
            names.add(match.group(1))
    return names
