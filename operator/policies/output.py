"""status.output from rank 0's termination message: {output_uri, manifest_sha256, metrics}.

The stage writes its result there (docs/stage-contract.md), so the operator learns the artifact's
URI and digest without object-storage credentials. Without a message (a stage that predates the
contract, or a fake node) the output URI is still the one the operator configured.
"""

from __future__ import annotations

import json

from forgeline.operator.policies.pods import Obj, rank, termination_message

MAX_METRICS = 32


def output_from_pods(default_uri: str, pods: list[Obj]) -> Obj:
    rank0 = next((p for p in pods if rank(p) == 0), None)
    out: Obj = {"uri": default_uri}
    message = termination_message(rank0) if rank0 else ""
    try:
        result = json.loads(message) if message else {}
    except ValueError:
        result = {}
    if isinstance(result, dict) and result.get("output_uri"):
        out["uri"] = str(result["output_uri"])
        if result.get("manifest_sha256"):
            out["digest"] = f"sha256:{result['manifest_sha256']}"
        metrics = {
            str(k): float(v)
            for k, v in (result.get("metrics") or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if metrics:
            out["metrics"] = dict(list(sorted(metrics.items()))[:MAX_METRICS])
    return out


def final_progress(output: Obj, updated: str) -> Obj | None:
    """status.progress once the stage succeeded: its final step count from the result metrics, so
    `kubectl get` shows a finished stage as complete whether or not rank 0 was ever scraped."""
    steps = (output.get("metrics") or {}).get("steps")
    if not steps:
        return None
    total = int(steps)
    return {"step": total, "total": total, "summary": f"{total}/{total} (100%)", "updated": updated}
