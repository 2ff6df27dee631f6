"""The chart's alert rules through promtool: they parse, and each alert fires when it should and
stays quiet when it should not (rules-test.yaml), with the thresholds of the default values."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart.helmkit import MONITORING_API, alert_groups, render

RULES_TEST = Path(__file__).with_name("rules-test.yaml")
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def promtool() -> Path:
    from testbed.prometheus import prometheus_dir

    return prometheus_dir() / "promtool"


@pytest.fixture(scope="module")
def rules() -> Obj:
    return alert_groups(render(api_versions=[MONITORING_API]))


def _go_value(value: float) -> str:
    """How Go's text/template prints a float64 ($value in an annotation)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def expand(template: str, labels: dict[str, str], value: float | None) -> str:
    """The subset of Prometheus's annotation templating the chart uses: $labels.X and $value."""
    text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    if value is not None:
        text = re.sub(r"\{\{\s*\$value\s*\}\}", _go_value(value), text)
    assert "{{" not in text, f"unexpanded template in {template!r}"
    return text


def with_annotations(tests: Obj, rules: Obj) -> Obj:
    """rules-test.yaml with every expected alert's exp_annotations filled from the rendered rule."""
    annotations = {r["alert"]: r["annotations"] for g in rules["groups"] for r in g["rules"]}
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                value = alert.pop("value", None)
                labels = {k: str(v) for k, v in alert["exp_labels"].items()}
                alert["exp_annotations"] = {
                    k: expand(v, labels, value) for k, v in annotations[case["alertname"]].items()
                }
    return tests


def test_rendered_rules_pass_promtool_check(promtool: Path, rules: Obj, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    res = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rules['groups'])} rules found" in res.stdout


def test_every_alert_has_a_firing_and_a_quiet_case(rules: Obj) -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    firing = {c["alertname"] for t in tests["tests"] for c in t["alert_rule_test"] if c["exp_alerts"]}
    quiet = {c["alertname"] for t in tests["tests"] for c in t["alert_rule_test"] if not c["exp_alerts"]}
    assert firing == alerts, f"alerts without a firing test: {alerts - firing}"
    assert quiet == alerts, f"alerts without a quiet test: {alerts - quiet}"


def test_alerts_fire_exactly_as_rules_test_expects(promtool: Path, rules: Obj, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = with_annotations(yaml.safe_load(RULES_TEST.read_text()), rules)
    (tmp_path / "rules-test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    res = subprocess.run(
        [str(promtool), "test", "rules", "rules-test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_catches_a_broken_expectation(promtool: Path, rules: Obj, tmp_path: Path) -> None:
    """The harness can fail: an alert expected on the wrong kind is reported."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = with_annotations(yaml.safe_load(RULES_TEST.read_text()), rules)
    stuck = next(t for t in tests["tests"] if t["name"] == "ForgelineJobStuckPending")
    stuck["alert_rule_test"][1]["exp_alerts"][0]["exp_labels"]["kind"] = "RLHFJob"
    (tmp_path / "rules-test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    res = subprocess.run(
        [str(promtool), "test", "rules", "rules-test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert res.returncode != 0 and "ForgelineJobStuckPending" in res.stdout + res.stderr
