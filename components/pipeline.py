"""`forgeline torchx PIPELINE.yaml --scheduler slurm|kubernetes|local_cwd`: a manifest as torchx launches.

The same manifest the operator reads, the same chain (forgeline.api.chain), the same stage config
(forgeline.api.stageconfig) and the same output URIs: each stage is launched once its upstreams have
committed, and gets their output URIs and manifest digests exactly as the operator passes them, so
artifacts and manifests are the operator's, byte for byte in layout. As with `forgeline run`, the
artifact manifest is the only proof a stage finished: a rerun skips every stage whose output has a
manifest, and a stage that stopped half-way resumes from its latest complete checkpoint.

What this does not do is what only the operator does: restart a failed gang (a failed stage stops
the pipeline; rerun to resume), keep a status, and chain by watching. A dry run prints what each
stage would submit; its downstream stages show their inputs by URI only (no digest yet).
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchx.runner import Runner
from torchx.specs import AppDef, AppState, CfgVal

from forgeline.api.chain import Chain, JobKey
from forgeline.api.kinds import Job
from forgeline.api.pipeline import PipelineError, load_pipeline
from forgeline.api.stageconfig import ResolvedInput, build_stage_config, output_uri
from forgeline.api.torchrun import CREDENTIAL_ENV
from forgeline.components.app import (
    ENV_CREDENTIALS,
    LaunchSettings,
    StageShape,
    cpu_count,
    memory_mb,
    stage_app,
)
from forgeline.jobs.errors import ContractError
from forgeline.jobs.storage import Storage, read_manifest

WAIT_INTERVAL = 2.0  # seconds between status polls of a running stage
GOOD = ("Succeeded", "Skipped", "Planned")  # states a downstream stage may start after


@dataclass(frozen=True)
class Site:
    """What the command line says about where stages run (the operator's flags, for torchx)."""

    store: str
    image: str
    python: str = "python"
    rdzv_port: int = 29500
    storage_endpoint: str | None = None
    credentials_secret: str | None = None  # "env": from the submitting environment, by name


@dataclass
class StageOutcome:
    key: JobKey
    output: str
    state: str  # Succeeded, Skipped, Failed, Blocked, Planned
    digest: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    handle: str | None = None


def shape_of(job: Job) -> StageShape:
    res = job.spec.resources
    return StageShape(
        nodes=res.nodes, procs=res.procs, gpus=res.gpus_per_node, cpu=cpu_count(res.cpu), mem_mb=memory_mb(res.memory)
    )


def settings_of(job: Job, site: Site) -> LaunchSettings:
    """The job's image, env and credentials over the site's defaults, as the operator merges them."""
    res = job.spec.resources
    plain = {e.name: e.value or "" for e in res.env if e.value_from is None}
    # A valueFrom variable cannot travel by reference through torchx: it must be set, by name,
    # where the job is submitted (Slurm and local pass that environment on); checked on each node.
    required = [e.name for e in res.env if e.value_from is not None]
    secret = job.spec.storage.credentials_secret or site.credentials_secret
    if secret:
        required += [n for n in CREDENTIAL_ENV if n not in required and n not in plain]
    return LaunchSettings(
        image=res.image or site.image,
        python=site.python,
        rdzv_port=site.rdzv_port,
        env=plain,
        env_secret=secret if secret and secret != ENV_CREDENTIALS else None,
        required_env=tuple(required),
    )


def job_app(job: Job, inputs: dict[str, ResolvedInput], site: Site) -> AppDef:
    """One stage's AppDef: the operator's stage config for this job, run by torchx."""
    config = build_stage_config(
        job,
        attempt=1,
        output=output_uri(site.store, job),
        inputs=inputs,
        endpoint=job.spec.storage.endpoint or site.storage_endpoint,
    )
    return stage_app(config.to_dict(), shape_of(job), settings_of(job, site), name=f"{job.metadata.name}-{job.stage}")


class TorchxPipeline:
    """Launch each stage through a torchx scheduler, upstreams first; `dryrun` submits nothing."""

    def __init__(
        self,
        jobs: list[Job],
        chain: Chain,
        site: Site,
        runner: Runner,
        scheduler: str,
        cfg: Mapping[str, CfgVal],
        *,
        dryrun: bool = False,
        say: Callable[[str], None] = print,
    ) -> None:
        self.jobs = {JobKey(j.kind, j.metadata.name): j for j in jobs}
        self.chain, self.site, self.runner, self.scheduler, self.cfg = chain, site, runner, scheduler, cfg
        self.dryrun, self.say = dryrun, say
        self.outcomes: dict[JobKey, StageOutcome] = {}

    def run(self) -> bool:
        for key in self.chain.order:
            self.outcomes[key] = self.run_stage(self.jobs[key])
        return all(o.state in GOOD for o in self.outcomes.values())

    def run_stage(self, job: Job) -> StageOutcome:
        key = JobKey(job.kind, job.metadata.name)
        outcome = StageOutcome(key, output_uri(self.site.store, job), state="Planned")
        blocked = [u for u in self.chain.upstreams(key) if self.outcomes[u].state not in GOOD]
        if blocked:
            outcome.state = "Blocked"
            self.say(f"--- {key}: blocked (upstream {blocked[0]} did not succeed)")
            return outcome
        storage = Storage(job.spec.storage.endpoint or self.site.storage_endpoint)
        if not self.dryrun and storage.exists(outcome.output.rstrip("/") + "/_MANIFEST.json"):
            manifest, outcome.digest = read_manifest(storage, outcome.output)
            outcome.state, outcome.metrics = "Skipped", dict(manifest.metrics)
            self.say(f"--- {key}: output already committed ({outcome.output}, sha256:{outcome.digest[:12]}); skipped")
            return outcome
        app = job_app(job, self._inputs(key, storage), self.site)
        info = self.runner.dryrun(app, self.scheduler, cfg=self.cfg)
        if self.dryrun:
            self.say(f"--- {key}: would submit to {self.scheduler}, output {outcome.output}\n{info}")
            return outcome
        started = time.monotonic()
        outcome.handle = self.runner.schedule(info)
        self.say(f"--- {key}: submitted {outcome.handle}; output {outcome.output}")
        status = self.runner.wait(outcome.handle, wait_interval=WAIT_INTERVAL)
        outcome.seconds = time.monotonic() - started
        if status is None or status.state != AppState.SUCCEEDED:
            outcome.state = "Failed"
            state = status.state.name if status else "gone"
            where = f"logs under {self.cfg['log_dir']}" if "log_dir" in self.cfg else f"`torchx log {outcome.handle}`"
            self.say(f"--- {key}: {state} ({where}); rerun the same command to resume")
            return outcome
        manifest, outcome.digest = read_manifest(storage, outcome.output)  # the only proof it finished
        outcome.state, outcome.metrics = "Succeeded", dict(manifest.metrics)
        self.say(f"--- {key}: committed {outcome.output} (sha256:{outcome.digest[:12]}) in {outcome.seconds:.1f}s")
        return outcome

    def _inputs(self, key: JobKey, storage: Storage) -> dict[str, ResolvedInput]:
        inputs = {}
        for ref in self.chain.references[key]:
            if ref.upstream is not None:
                upstream = self.outcomes[ref.upstream]
                inputs[ref.role] = ResolvedInput(upstream.output, upstream.digest and f"sha256:{upstream.digest}")
            elif ref.uri is not None:
                # The stage checks the manifest itself (exit 3); no read here, so a dry run needs no store.
                inputs[ref.role] = ResolvedInput(ref.uri)
        return inputs


def run_torchx_pipeline(
    path: Path,
    *,
    scheduler: str,
    site: Site,
    scheduler_args: tuple[str, ...] = (),
    dryrun: bool = False,
    runner: Runner | None = None,
) -> int:
    from torchx.runner import get_runner

    try:
        jobs, chain = load_pipeline(path)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    owned = runner is None
    runner = runner or get_runner()
    try:
        cfg = runner.cfg_from_str(scheduler, *(a for a in scheduler_args if a))  # later ones win
        print(f"forgeline: {len(jobs)} stage(s) from {path} on {scheduler}; store {site.store}")
        pipeline = TorchxPipeline(jobs, chain, site, runner, scheduler, cfg, dryrun=dryrun)
        ok = pipeline.run()
    except (ValueError, KeyError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if owned:
            runner.close()
    for key in chain.order:
        o = pipeline.outcomes[key]
        loss = o.metrics.get("final_loss", o.metrics.get("loss"))
        print(f"{key}: {o.state}" + (f", loss {loss:.4f}" if isinstance(loss, int | float) else "") + f"  {o.output}")
    return 0 if ok else 1


LOCAL_SCHEDULERS = ("local_cwd",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_for(
    scheduler: str,
    *,
    workdir: Path,
    store: str | None,
    image: str,
    python: str | None,
    rdzv_port: int | None,
    storage_endpoint: str | None,
    credentials: str | None,
) -> tuple[Site, str]:
    """The site and default scheduler args for a scheduler: on this machine (local_cwd) the store
    is under the workdir as for `forgeline run`, the interpreter is this one, and the rendezvous
    port is a free one (two gangs on one host must not share it)."""
    local = scheduler in LOCAL_SCHEDULERS
    workdir = workdir.resolve()
    site = Site(
        store=store or ((workdir / "store").as_uri() if local else "s3://forgeline"),
        image=image,
        python=python or (sys.executable if local else "python"),
        rdzv_port=rdzv_port or (free_port() if local else 29500),
        storage_endpoint=storage_endpoint,
        credentials_secret=credentials,
    )
    return site, (f"log_dir={workdir / 'torchx'}" if local else "")
