"""Quality gates (spec.gate): a stage starts only if its EvalJob's recorded result meets a condition.

The gate's EvalJob is an input like any other (forgeline.api.chain gives it the role `gate`), so
the inputs policy already waits for it to succeed and fails nothing while it runs. Once it has,
this policy reads only the EvalJob's status.output.metrics and its spec.baseline (win rates are
recorded against it) and evaluates the condition (forgeline.api.gate, pure and the same in
`forgeline run`). Not met: the job fails with reason GateFailed and the measured values; no pod is
ever started for it.
"""

from __future__ import annotations

from typing import Any

from forgeline.api.gate import GateResult, check
from forgeline.api.kinds import Job

Obj = dict[str, Any]
GATE_ROLE = "gate"


def recorded_metrics(body: Obj) -> dict[str, float]:
    output = (body.get("status") or {}).get("output") or {}
    metrics = output.get("metrics") or {}
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def check_gate(job: Job, upstreams: dict[str, Obj | None]) -> GateResult | None:
    """None: the job has no gate. Call once its inputs are ready (the EvalJob has succeeded)."""
    gate = getattr(job.spec, "gate", None)
    if gate is None:
        return None
    body = upstreams.get(GATE_ROLE)
    if body is None:  # resolve_inputs does not report ready without it; stay safe if called early
        return GateResult(False, f"EvalJob/{gate.eval_job} was not found")
    baseline = str((body.get("spec") or {}).get("baseline", ""))
    return check(gate, recorded_metrics(body), baseline)
