"""`forgeline run PIPELINE.yaml`: the local backend, and the embedded default.

Same models, same chain, same stage contract as the operator; torchrun processes on this
machine instead of pods, `file://` storage under the workdir instead of S3. Like the operator it
treats the artifact manifest as the only proof a stage finished: a rerun skips a stage whose
output has a manifest made by the same config from the same inputs (and runs it again, saying what
changed, otherwise), and an interrupted stage resumes from its latest complete checkpoint of the
same config.
Retryable failures (any exit code but 2 and 3) restart the whole gang, up to the job's
runPolicy.backoffLimit, as on a cluster.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgeline.api.chain import Chain, JobKey
from forgeline.api.gate import check
from forgeline.api.kinds import Job, RLHFJob
from forgeline.api.pipeline import PipelineError, load_pipeline
from forgeline.api.stageconfig import ResolvedInput, build_stage_config, output_uri
from forgeline.jobs.contract import MANIFEST_NAME, ContractError, InputError
from forgeline.jobs.errors import PERMANENT_EXIT_CODES
from forgeline.jobs.manifest import config_changes, config_fingerprint
from forgeline.jobs.storage import Storage, read_manifest
from forgeline.local.gang import Gang
from forgeline.local.progress import ProgressLine
from forgeline.local.report import (
    EVENTS_FILE,
    StageRecord,
    append_event,
    curve_metric,
    print_summary,
    read_events,
    restore_curves,
    write_report,
)


@dataclass
class LocalPipeline:
    jobs: dict[JobKey, Job]
    chain: Chain
    store: str
    workdir: Path
    max_procs: int
    records: dict[JobKey, StageRecord] = field(default_factory=dict)

    def run(self) -> bool:
        for key in self.chain.order:
            record = self.run_stage(self.jobs[key])
            self.records[key] = record
        return all(r.state in ("Succeeded", "Skipped") for r in self.records.values())

    def run_stage(self, job: Job) -> StageRecord:
        key = JobKey(job.kind, job.metadata.name)
        record = StageRecord(kind=job.kind, name=job.metadata.name, stage=job.stage, output=output_uri(self.store, job))
        storage = Storage(job.spec.storage.endpoint)
        blocked = [u for u in self.chain.upstreams(key) if self.records[u].state not in ("Succeeded", "Skipped")]
        if blocked:
            record.state, record.reason = "Blocked", f"upstream {blocked[0]} did not succeed"
            print(f"--- {key}: blocked ({record.reason})")
            return record
        gate = getattr(job.spec, "gate", None)
        if gate is not None:  # as the operator: the EvalJob's recorded metrics decide
            evaluator = self.jobs[JobKey("EvalJob", gate.eval_job)]
            verdict = check(gate, self.records[JobKey("EvalJob", gate.eval_job)].metrics, evaluator.spec.baseline)
            print(f"--- {key}: gate {'passed' if verdict.passed else 'failed'}: {verdict.message}")
            if not verdict.passed:
                record.state, record.reason = "Failed", f"GateFailed: {verdict.message}"
                return record
        try:
            inputs = self._inputs(job, storage)
        except ContractError as exc:
            record.state, record.reason = "Failed", str(exc)
            print(f"--- {key}: {exc}")
            return record
        record.inputs = {role: {"uri": ref.uri, "digest": ref.digest} for role, ref in inputs.items()}
        if self._already_committed(job, record, inputs, storage):
            return record
        return self._attempts(job, record, inputs)

    def _already_committed(
        self, job: Job, record: StageRecord, inputs: dict[str, ResolvedInput], storage: Storage
    ) -> bool:
        """Skip a stage only when its committed output was made by this config from these inputs.

        Anything else (a changed setting, an input that was retrained) runs the stage again and
        says what changed; the stage's own checkpoints are resumed only under the same config.
        """
        key = JobKey(job.kind, job.metadata.name)
        if not storage.exists(record.output.rstrip("/") + "/" + MANIFEST_NAME):
            return False
        manifest, digest = read_manifest(storage, record.output)
        nodes, procs = self._shape(job)
        wanted = build_stage_config(
            job, attempt=1, output=record.output, inputs=inputs, world_size=nodes * procs
        ).to_dict()
        # The config names each input with its manifest digest, so a retrained input shows here too.
        changes = config_changes(manifest.config, wanted)
        if changes:
            print(f"--- {key}: the committed output {record.output} was made by another config or input; "
                  f"running again ({'; '.join(changes[:6])}{'; ...' if len(changes) > 6 else ''})")  # fmt: skip
            return False
        record.state, record.digest, record.metrics = "Skipped", digest, dict(manifest.metrics)
        restore_curves(
            record, read_events(self._stage_dir(job) / EVENTS_FILE, config_fingerprint(wanted)), _metric(job)
        )
        print(f"--- {key}: output committed by the same config ({record.output}, sha256:{digest[:12]}); skipped")
        return True

    def _attempts(self, job: Job, record: StageRecord, inputs: dict[str, ResolvedInput]) -> StageRecord:
        key = JobKey(job.kind, job.metadata.name)
        nodes, procs = self._shape(job)
        stage_dir = self._stage_dir(job)
        stage_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            config = build_stage_config(
                job, attempt=attempt, output=record.output, inputs=inputs, world_size=nodes * procs
            )
            config_path = stage_dir / f"config-attempt{attempt}.json"
            config_path.write_text(json.dumps(config.to_dict(), indent=1))
            print(f"--- {key}: attempt {attempt}, {nodes} node(s) x {procs} process(es), logs in {stage_dir}")
            gang = Gang(
                stage=job.stage, config_path=config_path, nodes=nodes, procs=procs,
                rdzv_id=f"{job.metadata.name}-{uuid.uuid4().hex[:8]}-{attempt}",
                workdir=stage_dir / "run", log_prefix=stage_dir / f"attempt{attempt}",
            )  # fmt: skip
            line = ProgressLine(str(key), _metric(job))
            # Every progress event is kept in the stage dir as it arrives, so the curve survives an interrupt.
            events_path, fingerprint = stage_dir / EVENTS_FILE, config_fingerprint(config.to_dict())

            def on_event(
                event: dict[str, Any], path: Path = events_path, fp: str = fingerprint, shown: ProgressLine = line
            ) -> None:
                append_event(path, fp, event)
                shown.update(event)

            result = gang.run(on_event)
            line.finish()
            record.metrics = dict((result.last("result") or {}).get("metrics") or {})
            restore_curves(record, read_events(events_path, fingerprint), _metric(job))
            if result.exit_code == 0:
                final = result.last("result") or {}
                record.state = "Succeeded"
                record.digest = final.get("manifest_sha256")
                record.metrics = dict(final.get("metrics") or {})
                break
            reason = _failure_reason(result.tail, result.exit_code)
            retryable = result.exit_code not in PERMANENT_EXIT_CODES
            if not retryable or attempt > job.spec.run_policy.backoff_limit:
                record.state, record.reason = "Failed", reason
                break
            print(f"--- {key}: attempt {attempt} failed ({reason}); restarting the gang from its checkpoint")
        record.attempts = attempt
        record.seconds = time.monotonic() - started
        return record

    def _stage_dir(self, job: Job) -> Path:
        return self.workdir / "stages" / f"{job.kind.lower()}-{job.metadata.name}"

    def _shape(self, job: Job) -> tuple[int, int]:
        """Nodes and processes per node, capped so the gang fits this machine's cores."""
        nodes, procs = job.spec.resources.nodes, job.spec.resources.procs
        while nodes * procs > self.max_procs and procs > 1:
            procs -= 1
        nodes = max(1, min(nodes, self.max_procs // procs))
        return nodes, procs

    def _inputs(self, job: Job, storage: Storage) -> dict[str, ResolvedInput]:
        inputs = {}
        for ref in self.chain.references[JobKey(job.kind, job.metadata.name)]:
            if ref.upstream is not None:
                upstream = self.records[ref.upstream]
                inputs[ref.role] = ResolvedInput(upstream.output, upstream.digest and f"sha256:{upstream.digest}")
            else:
                assert ref.uri is not None
                _, digest = read_manifest(storage, ref.uri)  # InputError names the URI
                inputs[ref.role] = ResolvedInput(ref.uri, f"sha256:{digest}")
        return inputs


def _metric(job: Job) -> str:
    """What the stage's progress line and curve show (RLOO/GRPO: the reward; the rest: the loss)."""
    return curve_metric(job.stage, job.spec.rlhf.algorithm if isinstance(job, RLHFJob) else None)


def _failure_reason(tail: list[str], code: int) -> str:
    for line in reversed(tail):
        for marker in ("bad config:", "input ", "Error:", "error:"):
            if marker in line:
                return f"exit {code}: {line.strip()[:300]}"
    return f"exit {code}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_pipeline_file(path: Path, *, store: str | None, workdir: Path, max_procs: int | None) -> int:
    try:
        jobs, chain = load_pipeline(path)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    workdir = workdir.resolve()
    store = store or (workdir / "store").as_uri()
    pipeline = LocalPipeline(
        jobs={JobKey(j.kind, j.metadata.name): j for j in jobs},
        chain=chain,
        store=store,
        workdir=workdir,
        max_procs=max_procs or os.cpu_count() or 1,
    )
    print(f"forgeline: {len(jobs)} stage(s) from {path}; store {store}; workdir {workdir}")
    started = time.monotonic()
    # Ctrl-C and `kill` both stop the gang cleanly: a shell may have started us with SIGINT
    # ignored (a background job), and SIGTERM would otherwise leave the stage processes behind.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        ok = pipeline.run()
    except KeyboardInterrupt:
        print("\ninterrupted: every stage process was stopped; rerun the same command to resume", file=sys.stderr)
        return 130
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    records = [pipeline.records[k] for k in chain.order if k in pipeline.records]
    print_summary(records, time.monotonic() - started)
    report = write_report(records, workdir)
    print(f"report: {report}")
    return 0 if ok else 1


__all__ = ["LocalPipeline", "run_pipeline_file"]
