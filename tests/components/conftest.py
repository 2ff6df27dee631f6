"""Shared builders for the torchx component tests: the tiny pipeline and its stage configs."""

from __future__ import annotations

import json
from pathlib import Path

from forgeline.api.kinds import Job
from forgeline.api.manifests import load_documents
from forgeline.api.stageconfig import ResolvedInput, build_stage_config, output_uri
from forgeline.api.validate import parse_job

# Pretrain (2 nodes x 1 process) -> LoRA on it: seconds per stage on 2 cores.
TINY_PIPELINE = Path(__file__).with_name("tiny-pipeline.yaml")


def tiny_jobs() -> dict[str, Job]:
    """The tiny pipeline's jobs by stage (pretrain, lora)."""
    jobs = [parse_job(doc.body) for doc in load_documents(TINY_PIPELINE)]
    return {job.stage: job for job in jobs}


def write_stage_config(job: Job, store: str, path: Path, inputs: dict[str, ResolvedInput] | None = None) -> Path:
    """The stage config the operator would put in its ConfigMap for this job, as a file."""
    config = build_stage_config(job, attempt=1, output=output_uri(store, job), inputs=inputs or {})
    path.write_text(json.dumps(config.to_dict(), indent=1))
    return path
