"""The fault campaign's schedule: which faults, in which order, where, from one seed.

Everything random about a campaign comes from `random.Random(seed)` here, so a failing run is
replayed with `FORGELINE_CHAOS_SEED=<seed printed by the failed run>`. (What the schedule cannot
fix is the machine's timing: a fault aimed at "a checkpoint save" lands when the driver sees the
save start, so a replay repeats the same faults in the same order at the same kind of moment.)

Fault kinds:
* `trainer` - a signal to one rank of a running gang: SIGKILL to its torchrun workers (a crash,
  an OOM kill) or SIGTERM to the pod's main process (the pod stopped); `moment` says when:
  `running` (any time), `checkpoint` (as rank 0 starts a checkpoint save) or `handoff` (the
  first attempt of a stage whose upstream just succeeded, as soon as its trainers exist);
* `evict` - the Eviction API on one pod of a running gang (a drain): restarts without using
  the retry budget;
* `operator` - SIGKILL the operator, `moment` `any` or `after-apply`: the instant the watch shows
  the batch Job of a new attempt (children applied, the pass not finished), then start it again;
* `apiserver` - restart kube-apiserver (SIGTERM, same flags);
* `s3-outage` - the object store down for `seconds`, begun as a running stage nears its end (its
  output commit) while checkpoints are due (every stage checkpoints often in a campaign).
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass

SEED_ENV = "FORGELINE_CHAOS_SEED"


@dataclass(frozen=True)
class Fault:
    kind: str  # trainer, evict, operator, apiserver, s3-outage
    moment: str = "running"
    rank: int = 0  # for trainer and evict: which pod of the gang (node rank)
    signal: int = int(signal.SIGKILL)  # for trainer
    seconds: float = 0.0  # for s3-outage
    delay: float = 0.0  # for operator: seconds before it starts again

    def describe(self) -> str:
        if self.kind == "trainer":
            return f"trainer {signal.Signals(self.signal).name} rank {self.rank} ({self.moment})"
        if self.kind == "evict":
            return f"evict rank {self.rank}"
        if self.kind == "operator":
            return f"operator SIGKILL ({self.moment}, back after {self.delay:.1f}s)"
        if self.kind == "s3-outage":
            return f"S3 outage {self.seconds:.0f}s"
        return self.kind


@dataclass(frozen=True)
class CampaignSpec:
    trainer_kills: int
    evictions: int
    operator_kills: int
    apiserver_restarts: int
    s3_outage_seconds: float  # 0: none
    handoff_kills: int = 1  # of trainer_kills, aimed at a hand-off
    checkpoint_kills: int = 1  # of trainer_kills, aimed at a checkpoint save
    after_apply_kills: int = 1  # of operator_kills, at a new attempt's Job

    def __post_init__(self) -> None:
        if self.handoff_kills + self.checkpoint_kills > self.trainer_kills:
            raise ValueError("handoff_kills + checkpoint_kills cannot exceed trainer_kills")
        if self.after_apply_kills > self.operator_kills:
            raise ValueError("after_apply_kills cannot exceed operator_kills")


QUICK = CampaignSpec(
    trainer_kills=2, evictions=1, operator_kills=2, apiserver_restarts=1, s3_outage_seconds=20, handoff_kills=1
)  # 20 s: botocore's own retries can hide a shorter outage from the trainer's retry layer
FULL = CampaignSpec(
    trainer_kills=20,
    evictions=2,
    operator_kills=10,
    apiserver_restarts=1,
    s3_outage_seconds=30,
    handoff_kills=3,
    checkpoint_kills=6,
    after_apply_kills=4,
)


def seed_from_env() -> int:
    """FORGELINE_CHAOS_SEED when set (a replay), else a fresh seed (printed by the campaign)."""
    raw = os.environ.get(SEED_ENV, "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


def make_schedule(spec: CampaignSpec, seed: int, ranks: int = 2) -> list[Fault]:
    """The faults of one campaign in the order they are injected.

    Hand-off kills are taken out of order by the driver, whenever a hand-off happens; the S3
    outage and the API server restart sit in the middle half, so that stages run around them.
    """
    rng = random.Random(seed)

    def sig() -> int:
        return int(rng.choice((signal.SIGKILL, signal.SIGTERM)))

    trainer = [Fault("trainer", "handoff", rng.randrange(ranks), sig()) for _ in range(spec.handoff_kills)]
    trainer += [Fault("trainer", "checkpoint", rng.randrange(ranks), sig()) for _ in range(spec.checkpoint_kills)]
    rest = spec.trainer_kills - spec.handoff_kills - spec.checkpoint_kills
    trainer += [Fault("trainer", "running", rng.randrange(ranks), sig()) for _ in range(rest)]
    # The first trainer fault is SIGKILL and the second SIGTERM (when there are two), so even the
    # quick campaign sees both; the rest is the seed's.
    kinds = [signal.SIGKILL, signal.SIGTERM]
    trainer = [
        Fault(f.kind, f.moment, f.rank, int(kinds[i]) if i < len(kinds) else f.signal) for i, f in enumerate(trainer)
    ]
    operator = [
        Fault("operator", "after-apply" if i < spec.after_apply_kills else "any", delay=round(rng.uniform(0, 3), 1))
        for i in range(spec.operator_kills)
    ]
    evict = [Fault("evict", rank=rng.randrange(ranks)) for _ in range(spec.evictions)]
    faults = trainer + operator + evict
    rng.shuffle(faults)
    middle = [Fault("apiserver") for _ in range(spec.apiserver_restarts)]
    if spec.s3_outage_seconds:
        middle.append(Fault("s3-outage", "near-commit", seconds=spec.s3_outage_seconds))
    for fault in middle:
        lo, hi = len(faults) // 4, max(len(faults) * 3 // 4, len(faults) // 4)
        faults.insert(rng.randint(lo, hi), fault)
    return faults
