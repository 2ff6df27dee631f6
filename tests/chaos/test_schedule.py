"""The campaign's schedule replays from its seed, and its duplicate detector sees what it must."""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import pytest
from chaos.schedule import FULL, QUICK, SEED_ENV, CampaignSpec, make_schedule, seed_from_env
from testbed.gangs import Sighting, duplicate_gangs


def test_same_seed_same_schedule_other_seed_other_order() -> None:
    assert make_schedule(FULL, 7) == make_schedule(FULL, 7)
    assert make_schedule(FULL, 7) != make_schedule(FULL, 8)


@pytest.mark.parametrize("spec", [QUICK, FULL], ids=["quick", "full"])
def test_schedule_has_every_fault_the_spec_asks_for(spec: CampaignSpec) -> None:
    faults = make_schedule(spec, 1234)
    kinds = Counter(f.kind for f in faults)
    assert kinds == {
        "trainer": spec.trainer_kills,
        "evict": spec.evictions,
        "operator": spec.operator_kills,
        "apiserver": spec.apiserver_restarts,
        "s3-outage": 1,
    }
    moments = Counter(f.moment for f in faults)
    assert moments["handoff"] == spec.handoff_kills and moments["checkpoint"] == spec.checkpoint_kills
    assert moments["after-apply"] == spec.after_apply_kills
    signals = {f.signal for f in faults if f.kind == "trainer"}
    assert signals == {signal.SIGKILL, signal.SIGTERM}, "both a crash and a stop, even in the quick campaign"
    assert {f.rank for f in faults if f.kind == "trainer"} <= {0, 1}


def test_full_campaign_meets_the_issue_minimums() -> None:
    assert FULL.trainer_kills >= 20 and FULL.operator_kills >= 10
    assert FULL.apiserver_restarts == 1 and FULL.s3_outage_seconds >= 30


def test_seed_comes_from_the_environment_for_a_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SEED_ENV, "99")
    assert seed_from_env() == 99


def sighting(t: float, kind: str, type_: str, uid: str, attempt: int, phase: str = "Running") -> Sighting:
    obj: dict[str, Any] = {}
    return Sighting(t, kind, type_, f"{kind}-{uid}", uid, "base", attempt, "0", phase, False, obj)


def test_a_second_batch_job_for_one_attempt_is_a_duplicate() -> None:
    stream = [
        sighting(1, "Job", "ADDED", "j1", 1, "Active"),
        sighting(2, "Job", "DELETED", "j1", 1, "Active"),
        sighting(3, "Job", "ADDED", "j2", 1, "Active"),  # attempt 1 made again after its deletion
    ]
    assert [v.what for v in duplicate_gangs(stream, {"base": 2})] == ["base attempt 1: batch Jobs ['j1', 'j2']"]


def test_more_live_pods_than_a_gang_is_a_duplicate_but_a_new_attempt_is_not() -> None:
    clean = [
        sighting(1, "Pod", "ADDED", "p1", 1),
        sighting(1, "Pod", "ADDED", "p2", 1),
        sighting(2, "Pod", "MODIFIED", "p1", 1, "Failed"),
        sighting(3, "Pod", "ADDED", "p3", 2),
        sighting(3, "Pod", "ADDED", "p4", 2),
    ]
    assert duplicate_gangs(clean, {"base": 2}) == []
    doubled = [*clean[:2], sighting(2, "Pod", "ADDED", "p5", 1)]
    assert [v.what for v in duplicate_gangs(doubled, {"base": 2})] == ["base attempt 1: 3 live pods at once"]
