"""What every stage needs around its training code: process group, device, precision, seeding,
input fetch, output commit, progress lines, metrics, and the exit-code discipline.

A stage module is `stage_main("pretrain", train)` plus its `train(rt) -> metrics`. Everything
that decides how a pod ends (exit 2 for a bad config, 3 for a missing input, 1 for the rest, the
termination message, the final `result` line) lives here, once, so the four stages cannot drift.

Collective discipline: work done on one rank (downloads, uploads) reports success or failure to
all ranks through `on_rank_zero`, so a failure on rank 0 fails the gang at once instead of
leaving the others blocked in a barrier until the collective timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import sys
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from forgeline.jobs import contract
from forgeline.jobs.contract import ArtifactRef, ConfigError, ContractError, InputError, Manifest, StageConfig
from forgeline.jobs.manifest import config_fingerprint

T = TypeVar("T")

for _name, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("TRL_EXPERIMENTAL_SILENCE", "1"),
):
    os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402  (after the environment defaults above, which libraries read at import)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from forgeline.jobs import storage as st  # noqa: E402
from forgeline.jobs.metrics import StageMetrics  # noqa: E402


def pick_precision(requested: str, device: torch.device) -> str:
    """Precision from the hardware, never from library defaults (trl defaults to bf16 even on CPU)."""
    on_gpu = device.type == "cuda"
    if requested == "auto":
        return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    if requested == "fp16" and not on_gpu:
        raise ConfigError("training.precision", "fp16 needs a GPU; use auto, fp32 or bf16")
    return requested


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Runtime:
    cfg: StageConfig
    rank: int
    world: int
    local_rank: int
    device: torch.device
    precision: str
    storage: st.Storage
    scratch: Path
    metrics: StageMetrics
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def emit(self, event: str, **fields: Any) -> None:
        """One JSON line on stdout (rank 0 only): the runner's and the operator's progress feed."""
        if self.is_main:
            print(json.dumps({"event": event, **fields}, default=float), flush=True)

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def all_gather(self, obj: T) -> list[T]:
        if not dist.is_initialized():
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        if not dist.is_initialized():
            return obj
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=0)
        return typing.cast(T, box[0])

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if dist.is_initialized():
            dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def on_rank_zero(self, fn: Callable[[], T], local: bool = False) -> T | None:
        """Run fn on (local) rank 0 only; every rank raises if it failed there."""
        me = self.local_rank == 0 if local else self.is_main
        outcome: tuple[str, int, str] = ("ok", 0, "")
        result = None
        if me:
            try:
                result = fn()
            except ContractError as exc:
                outcome = (type(exc).__name__, exc.exit_code, str(exc))
            except Exception as exc:
                traceback.print_exc()
                outcome = ("error", 1, f"{type(exc).__name__}: {exc}")
        for kind, code, message in self.all_gather(outcome):
            if kind != "ok":
                raise StageFailure(code, message)
        return result

    def fetch_input(self, name: str, ref: ArtifactRef) -> Path:
        """Download a verified input artifact to node-local scratch; records its lineage digest.

        The input is a forgeline artifact or a plain Hugging Face model directory, whose manifest
        rank 0 synthesizes by hashing every file (storage.read_manifest): read once, shared with
        every rank, and a failure there (exit 3) fails them all at once.
        """
        found = self.broadcast(self.on_rank_zero(lambda: st.read_manifest(self.storage, ref.uri, ref.digest)))
        assert found is not None
        sha = found[1]
        local = self.scratch.parent / "inputs" / sha
        self.on_rank_zero(lambda: st.fetch(self.storage, ref.uri, local, ref.digest, known=found), local=True)
        self.inputs[name] = {"uri": ref.uri, "manifest_sha256": sha}
        return local

    def publish(self, local_dir: Path, metrics: dict[str, Any]) -> str:
        """Commit the stage output (files first, manifest last); returns the manifest digest."""
        manifest = Manifest(
            stage=self.cfg.stage,
            run=dataclasses.asdict(self.cfg.run),
            files=[],
            config=self.cfg.to_dict(),
            inputs=self.inputs,
            metrics=metrics,
        )
        sha = self.on_rank_zero(lambda: st.publish_dir(self.storage, local_dir, self.cfg.output_uri, manifest))
        return self.broadcast(sha or "")


class StageFailure(Exception):
    def __init__(self, exit_code: int, message: str) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def start(cfg: StageConfig) -> Runtime:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30), device_id=device if use_cuda else None
        )
    precision = pick_precision(cfg.training.precision, device)
    seed_everything(cfg.training.seed)
    key = hashlib.sha256(cfg.output_uri.encode()).hexdigest()[:16]
    scratch = st.scratch_root() / "runs" / key / f"rank-{rank}"
    scratch.mkdir(parents=True, exist_ok=True)
    metrics = StageMetrics(cfg.stage)
    rt = Runtime(cfg, rank, world, local_rank, device, precision, st.Storage(cfg.storage.endpoint), scratch, metrics)
    if rt.is_main:
        metrics.serve(cfg.observability.metrics_port)
    return rt


def already_done(rt: Runtime) -> tuple[str, dict[str, Any]] | None:
    """A previous attempt that committed the same config: report it again instead of retraining."""
    try:
        manifest, sha = st.read_manifest(rt.storage, rt.cfg.output_uri)
    except InputError:
        return None
    same = config_fingerprint(rt.cfg.to_dict()) == config_fingerprint(manifest.config)
    return (sha, manifest.metrics) if same else None


def stage_main(
    stage: str, train: Callable[[Runtime], tuple[Path, dict[str, Any]]], argv: list[str] | None = None
) -> int:
    """Entry point of `python -m forgeline.jobs.<stage> --config FILE`; returns the exit code."""
    parser = argparse.ArgumentParser(prog=f"python -m forgeline.jobs.{stage}")
    parser.add_argument("--config", required=True, help="stage config JSON (docs/stage-contract.md)")
    args = parser.parse_args(argv)
    is_main = os.environ.get("RANK", "0") == "0"
    term_path = contract.peek_termination_path(args.config)
    try:
        cfg = contract.load_config(args.config)
        term_path = cfg.observability.termination_message_path
        if cfg.stage != stage:
            raise ConfigError("stage", f"is {cfg.stage!r} but this is the {stage} stage")
        rt = start(cfg)
        try:
            done = already_done(rt)
            if done is None:
                local_dir, metrics = train(rt)
                sha = rt.publish(local_dir, metrics)
            else:
                sha, metrics = done
            rt.emit("result", output_uri=cfg.output_uri, manifest_sha256=sha, metrics=metrics)
            if rt.is_main:
                contract.write_termination_message(contract.result_summary(cfg.output_uri, sha, metrics), term_path)
            rt.barrier()
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        return contract.EXIT_OK
    except (ContractError, StageFailure) as exc:
        code, error = exc.exit_code, exc
    except Exception as exc:
        traceback.print_exc()
        code, error = 1, exc
    print(f"forgeline: {stage} failed (exit {code}): {error}", file=sys.stderr, flush=True)
    if is_main:
        contract.write_termination_message(contract.error_summary(error, code), term_path)
    return code


def exit_process(code: int) -> typing.NoReturn:
    """End a stage process with `code`, skipping the interpreter's C++ static teardown.

    Everything that matters is done by now (artifact committed, result printed, termination
    message written, process group destroyed). Once in many runs a worker aborted during
    interpreter teardown ("terminate called without an active exception", exit -6) after a
    successful run, which torchrun reports as a failed, retryable attempt. Flushing and leaving
    with os._exit makes the exit code the stage's decision alone.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
