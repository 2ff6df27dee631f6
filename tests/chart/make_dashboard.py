"""Writes charts/forgeline/files/dashboards/forgeline.json, the chart's Grafana dashboard.

Generated rather than hand-edited: panel ids and grid positions are computed, every query is in one
list, and tests/chart/test_chart.py checks that the file is current and that every metric a panel
queries is one the operator or the trainers export.

    PYTHONSAFEPATH=1 .venv/bin/python tests/chart/make_dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[2] / "charts" / "forgeline" / "files" / "dashboards" / "forgeline.json"
JOB_FILTER = 'namespace=~"$namespace", forgeline_job=~"$job"'


def _quantiles(metric: str, by: str, window: str) -> list[tuple[str, str]]:
    """p50 and p90 of a histogram, summed over everything but `by` (and le)."""
    group = f"{by}, le" if by else "le"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{window}])))", f"{legend}p{int(q * 100)}")
        for q in (0.5, 0.9)
    ]


def _grid(x: int, y: int, w: int, h: int) -> dict[str, int]:
    return {"h": h, "w": w, "x": x, "y": y}


# (title, unit, [(expr, legend)], width): one row of panels per group, 24 grid units wide.
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], int]]]] = [
    (
        "Jobs",
        [
            ("Jobs by state", "short", [("sum by (state) (forgeline_operator_jobs)", "{{state}}")], 8),
            ("Jobs by kind", "short", [("sum by (kind) (forgeline_operator_jobs)", "{{kind}}")], 8),
            (
                "Gang restarts (1h)",
                "short",
                [("sum by (kind, reason) (increase(forgeline_operator_restarts_total[1h]))", "{{kind}} {{reason}}")],
                8,
            ),
        ],
    ),
    (
        "Training",
        [
            (
                "Progress",
                "percentunit",
                [
                    (
                        f"max by (forgeline_job, stage) (forgeline_train_step{{{JOB_FILTER}}})"
                        f" / max by (forgeline_job, stage) (forgeline_train_total_steps{{{JOB_FILTER}}})",
                        "{{forgeline_job}} ({{stage}})",
                    )
                ],
                8,
            ),
            (
                "Tokens/s",
                "short",
                [
                    (
                        f"sum by (forgeline_job) (rate(forgeline_train_tokens_total{{{JOB_FILTER}}}[2m]))",
                        "{{forgeline_job}}",
                    )
                ],
                8,
            ),
            ("Loss", "short", [(f"forgeline_train_loss{{{JOB_FILTER}}}", "{{forgeline_job}} ({{stage}})")], 8),
            (
                "Step time p50 / p90",
                "s",
                [
                    (
                        "histogram_quantile(0.5, sum by (forgeline_job, le) "
                        f"(rate(forgeline_train_step_duration_seconds_bucket{{{JOB_FILTER}}}[5m])))",
                        "{{forgeline_job}} p50",
                    ),
                    (
                        "histogram_quantile(0.9, sum by (forgeline_job, le) "
                        f"(rate(forgeline_train_step_duration_seconds_bucket{{{JOB_FILTER}}}[5m])))",
                        "{{forgeline_job}} p90",
                    ),
                ],
                8,
            ),
            (
                "Seconds since the last step",
                "s",
                [(f"time() - forgeline_last_step_timestamp_seconds{{{JOB_FILTER}}}", "{{forgeline_job}}")],
                8,
            ),
            (
                "Reward (RLHF) / accuracy (reward model)",
                "short",
                [
                    (f"forgeline_rlhf_reward{{{JOB_FILTER}}}", "{{forgeline_job}} reward"),
                    (f"forgeline_reward_accuracy{{{JOB_FILTER}}}", "{{forgeline_job}} accuracy"),
                ],
                8,
            ),
            (
                "Checkpoint save p90",
                "s",
                [
                    (
                        "histogram_quantile(0.9, sum by (forgeline_job, le) "
                        f"(rate(forgeline_checkpoint_save_duration_seconds_bucket{{{JOB_FILTER}}}[30m])))",
                        "{{forgeline_job}}",
                    )
                ],
                12,
            ),
            (
                "Checkpoint bytes/s",
                "Bps",
                [
                    (
                        f"sum by (forgeline_job) (rate(forgeline_checkpoint_bytes_total{{{JOB_FILTER}}}[30m]))",
                        "{{forgeline_job}}",
                    )
                ],
                12,
            ),
        ],
    ),
    (
        "Operator",
        [
            (
                "Hand-off latency p50 / p90",
                "s",
                _quantiles("forgeline_operator_stage_handoff_seconds", "", "30m"),
                8,
            ),
            (
                "Gang start-up p50 / p90",
                "s",
                _quantiles("forgeline_operator_gang_startup_seconds", "", "30m"),
                8,
            ),
            (
                "Reconciles/s and errors/s",
                "reqps",
                [
                    ("sum by (kind) (rate(forgeline_operator_reconcile_total[5m]))", "{{kind}}"),
                    ("sum by (kind) (rate(forgeline_operator_reconcile_errors_total[5m]))", "{{kind}} errors"),
                ],
                8,
            ),
        ],
    ),
]


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for title, row in ROWS:
        panels.append({"id": next_id, "type": "row", "title": title, "collapsed": False, "gridPos": _grid(0, y, 24, 1)})
        next_id += 1
        y += 1
        x = 0
        for panel_title, unit, queries, width in row:
            if x + width > 24:
                x, y = 0, y + 8
            panels.append(
                {
                    "id": next_id,
                    "type": "timeseries",
                    "title": panel_title,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                    "gridPos": _grid(x, y, width, 8),
                    "targets": [
                        {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                        for i, (expr, legend) in enumerate(queries)
                    ],
                }
            )
            next_id += 1
            x += width
        y += 8
    return {
        "uid": "forgeline",
        "title": "forgeline",
        "description": "forgeline jobs, training progress and the operator (charts/forgeline)",
        "tags": ["forgeline", "training"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
                _variable("namespace", "Namespace", "label_values(forgeline_train_step, namespace)"),
                _variable("job", "Job", 'label_values(forgeline_train_step{namespace=~"$namespace"}, forgeline_job)'),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(OUT)
