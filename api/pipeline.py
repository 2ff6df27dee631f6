"""A pipeline file for a backend that runs it whole (`forgeline run`, `forgeline torchx`).

The same parsing and checks as `forgeline validate` (forgeline.api.validate), plus one more: every
upstream a job names must be in the file, because nothing else will run it (on a cluster it may
already exist in the namespace, which is why validate lets that pass).
"""

from __future__ import annotations

from pathlib import Path

from forgeline.api.chain import Chain, resolve
from forgeline.api.kinds import Job
from forgeline.api.manifests import iter_documents
from forgeline.api.validate import validate_documents


class PipelineError(Exception):
    """The pipeline cannot start; the message lists every problem and where."""


def load_pipeline(path: Path) -> tuple[list[Job], Chain]:
    """Parse and check a pipeline file; PipelineError lists every problem."""
    jobs, problems = validate_documents(iter_documents([path]))
    messages = [str(p) for p in problems]
    chain = resolve(jobs)
    messages += [f"{path} {p.job}: {p.field}: {p.message}" for p in chain.problems if p.code == "missing"]
    if messages:
        raise PipelineError("\n".join(messages))
    return jobs, chain
