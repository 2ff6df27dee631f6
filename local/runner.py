"""`forgeline run PIPELINE.yaml`: the local backend, and the embedded default.

Same models, same chain, same stage contract as the operator; torchrun processes on this
machine instead of pods, `file://` storage under the workdir instead of S3. Like the operator it
treats the artifact manifest as the only proof a stage finished: a rerun skips every stage whose
output has a manifest, and an interrupted stage resumes from its latest complete checkpoint.
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

from forgeline.api.chain import Chain, JobKey, resolve
from forgeline.api.kinds import Job
from forgeline.api.manifests import ManifestSyntaxError, load_documents
from forgeline.api.stageconfig import ResolvedInput, build_stage_config, output_uri
from forgeline.api.validate import InvalidManifest, Problem, parse_job, subject_of
from forgeline.jobs.contract import ContractError, InputError
from forgeline.jobs.errors import PERMANENT_EXIT_CODES
from forgeline.jobs.storage import Storage, read_manifest
from forgeline.local.gang import Gang
from forgeline.local.progress import ProgressLine
from forgeline.local.report import CURVE_METRIC, StageRecord, curve_point, print_summary, write_report


class PipelineError(Exception):
    """The pipeline cannot start; the message says why and what to do."""


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
        if storage.exists(record.output.rstrip("/") + "/_MANIFEST.json"):
            manifest, digest = read_manifest(storage, record.output)
            record.state, record.digest, record.metrics = "Skipped", digest, dict(manifest.metrics)
            print(f"--- {key}: output already committed ({record.output}, sha256:{digest[:12]}); skipped")
            return record
        try:
            inputs = self._inputs(job, storage)
        except ContractError as exc:
            record.state, record.reason = "Failed", str(exc)
            print(f"--- {key}: {exc}")
            return record
        return self._attempts(job, record, inputs)

    def _attempts(self, job: Job, record: StageRecord, inputs: dict[str, ResolvedInput]) -> StageRecord:
        key = JobKey(job.kind, job.metadata.name)
        nodes, procs = self._shape(job)
        stage_dir = self.workdir / "stages" / f"{job.kind.lower()}-{job.metadata.name}"
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
            line = ProgressLine(str(key), CURVE_METRIC.get(job.stage, "loss"))
            result = gang.run(line.update)
            line.finish()
            record.curve.extend(p for e in result.events if (p := curve_point(job.stage, e)) is not None)
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


def _failure_reason(tail: list[str], code: int) -> str:
    for line in reversed(tail):
        for marker in ("bad config:", "input ", "Error:", "error:"):
            if marker in line:
                return f"exit {code}: {line.strip()[:300]}"
    return f"exit {code}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def load_pipeline(path: Path) -> tuple[list[Job], Chain]:
    """Parse and check a pipeline file; PipelineError lists every problem."""
    try:
        documents = load_documents(path)
    except ManifestSyntaxError as exc:
        raise PipelineError(str(exc)) from None
    jobs: list[Job] = []
    problems: list[str] = []
    for doc in documents:
        try:
            jobs.append(parse_job(doc.body))
        except InvalidManifest as exc:
            problems.extend(str(Problem(doc.source, subject_of(doc.body), e)) for e in exc.errors)
    chain = resolve(jobs)
    problems += [f"{path} {p.job}: {p.field}: {p.message}" for p in chain.problems]
    if problems:
        raise PipelineError("\n".join(problems))
    return jobs, chain


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


__all__ = ["LocalPipeline", "PipelineError", "load_pipeline", "run_pipeline_file"]
