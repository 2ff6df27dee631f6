"""Bridges transformers' Trainer (used by the rlhf stage through trl) to our runtime.

- `ProgressCallback`: Trainer logs -> JSON progress lines and Prometheus metrics.
- `CheckpointMirror`: each `checkpoint-N/` the Trainer writes locally is published as
  `<output>/checkpoints/step-N/` with its own manifest (each rank uploads its own RNG file, rank
  0 the rest and then the manifest), and only the newest K complete ones are kept.
- `restore_latest`: before training, the newest complete checkpoint is downloaded to the local
  `checkpoint-N/` the Trainer resumes from (model, optimizer, scheduler, RNG, data position).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from forgeline.jobs import storage as st
from forgeline.jobs.checkpoint import Checkpointer
from forgeline.jobs.contract import FileEntry, Manifest
from forgeline.jobs.runtime import Runtime

RNG_FILE = re.compile(r"^rng_state(_\d+)?\.pth$")


class ProgressCallback(TrainerCallback):
    def __init__(self, rt: Runtime, total: int, tokens_per_step: int) -> None:
        self.rt, self.total, self.tokens_per_step = rt, total, tokens_per_step
        self._last = time.perf_counter()
        self._window_start = time.perf_counter()
        self._window_steps = 0
        rt.metrics.total_steps.labels(rt.cfg.stage).set(total)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        now = time.perf_counter()
        self.rt.metrics.on_step(state.global_step, self.tokens_per_step, now - self._last)
        self._last = now
        self._window_steps += 1

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        logs = logs or {}
        if "loss" not in logs and "reward" not in logs:
            return
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-9)
        tps = self._window_steps * self.tokens_per_step / elapsed
        self._window_start, self._window_steps = now, 0
        loss = logs.get("loss")
        self.rt.metrics.on_log(loss)
        if "reward" in logs:
            self.rt.metrics.reward.labels(self.rt.cfg.stage).set(logs["reward"])
        keep = {k: v for k, v in logs.items() if isinstance(v, int | float) and k != "loss"}
        self.rt.emit(
            "progress",
            stage=self.rt.cfg.stage,
            step=state.global_step,
            total=self.total,
            loss=loss,
            tokens_per_s=round(tps, 1),
            metrics=keep,
        )


class CheckpointMirror(TrainerCallback):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.ckpt = Checkpointer(rt)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        rt = self.rt
        started = time.perf_counter()
        step = state.global_step
        local = Path(args.output_dir) / f"checkpoint-{step}"
        uri = st.join(self.ckpt.root, f"step-{step}")
        mine = [
            p
            for p in local.iterdir()
            if RNG_FILE.match(p.name) and p.name in (f"rng_state_{rt.rank}.pth", "rng_state.pth")
        ]
        entries = [FileEntry(p.name, p.stat().st_size, st.file_sha256(p)) for p in mine]
        for p in mine:
            rt.storage.put_file(p, st.join(uri, p.name))
        rng_entries = [e for part in rt.all_gather(entries) for e in part]

        def commit() -> int:
            files = list(rng_entries)
            for p in sorted(local.rglob("*")):
                rel = p.relative_to(local).as_posix()
                if p.is_file() and not RNG_FILE.match(p.name):
                    rt.storage.put_file(p, st.join(uri, rel))
                    files.append(FileEntry(rel, p.stat().st_size, st.file_sha256(p)))
            st.commit(
                rt.storage,
                uri,
                Manifest(
                    stage=rt.cfg.stage,
                    run={"step": step},
                    files=files,
                    config={"output_uri": rt.cfg.output_uri, "fingerprint": self.ckpt.fingerprint},
                    inputs=rt.inputs,
                ),
            )
            self.ckpt.prune(step)
            return sum(f.size for f in files)

        nbytes = rt.on_rank_zero(commit) or 0
        seconds = time.perf_counter() - started
        rt.metrics.on_checkpoint(seconds, nbytes)
        rt.emit("checkpoint", step=step, uri=uri, bytes=nbytes, seconds=round(seconds, 3))


def restore_latest(rt: Runtime, output_dir: Path) -> str | None:
    """Download the newest complete checkpoint for the Trainer; returns its local path or None."""
    ckpt = Checkpointer(rt)
    found = rt.broadcast(ckpt.latest() if rt.is_main else None)
    if found is None:
        return None
    step, uri = found
    manifest, _ = st.read_manifest(rt.storage, uri)
    local = st.fresh_dir(output_dir / f"checkpoint-{step}")
    wanted = [
        f.path
        for f in manifest.files
        if not RNG_FILE.match(f.path) or f.path in (f"rng_state_{rt.rank}.pth", "rng_state.pth")
    ]
    st.fetch(rt.storage, uri, local, only=wanted)
    rt.emit("resumed", step=step, checkpoint=uri)
    return str(local)


def save_trained(rt: Runtime, trained: Any, tokenizer: Any) -> Path:
    """Save a trl-trained policy and its tokenizer as the stage output (rank 0); returns the directory.

    The tokenizer pads on the left while it generates completions; a saved model pads on the right,
    as transformers expects for training and scoring elsewhere.
    """
    out = rt.scratch / "output"
    if rt.is_main:
        st.fresh_dir(out)
        trained.save_pretrained(str(out))
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(str(out))
    rt.barrier()
    return out
