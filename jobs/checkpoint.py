"""Periodic checkpoints under `<output>/checkpoints/step-N/` and resume from the newest complete one.

A checkpoint is an artifact like any other: its files first, its own `_MANIFEST.json` last. The
newest step directory that has a readable manifest wins; a directory without one (an attempt
killed mid-upload) is ignored and later cleaned up. Contents:
- `state.pt` (rank 0): full, unsharded model and optimizer state (via torch's distributed
  state-dict API, so DDP and FSDP save the same thing and a resume may change world size),
  scheduler state, the step and the data position;
- `rng-<rank>.pt` (each rank): that rank's Python, NumPy and torch RNG states.
Full state (not sharded DCP) is the right trade-off for the model sizes these stages train; a
sharded writer can replace `save` without changing the layout contract.
"""

from __future__ import annotations

import re
import time
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from forgeline.jobs import storage as st
from forgeline.jobs.contract import MANIFEST_NAME, FileEntry, InputError, Manifest
from forgeline.jobs.manifest import config_fingerprint
from forgeline.jobs.runtime import Runtime, rng_state, set_rng_state

STEP_DIR = re.compile(r"^step-(\d+)$")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class Checkpointer:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.root = st.join(rt.cfg.output_uri, "checkpoints")
        self.keep = rt.cfg.training.keep_checkpoints
        # A checkpoint of another config (a rerun after the spec changed) is never resumed.
        self.fingerprint = config_fingerprint(rt.cfg.to_dict())

    def _steps(self) -> list[int]:
        found = (STEP_DIR.match(name) for name in self.rt.storage.list_dirs(self.root))
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def latest(self) -> tuple[int, str] | None:
        """The newest complete checkpoint of this config (step, uri), skipping any without a manifest."""
        for step in self._steps():
            uri = st.join(self.root, f"step-{step}")
            try:
                manifest, _ = st.read_manifest(self.rt.storage, uri)
            except InputError:
                continue
            if manifest.config.get("fingerprint") != self.fingerprint:
                continue
            return step, uri
        return None

    def save(
        self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, extra: dict[str, Any]
    ) -> None:
        rt = self.rt
        started = time.perf_counter()
        uri = st.join(self.root, f"step-{step}")
        model_sd, optim_sd = get_state_dict(model, optimizer, options=FULL)  # collective under FSDP
        local = st.fresh_dir(rt.scratch / "checkpoint")
        rng_name = f"rng-{rt.rank}.pt"
        torch.save(rng_state(), local / rng_name)
        rt.storage.put_file(local / rng_name, st.join(uri, rng_name))
        entries: list[FileEntry] = [
            FileEntry(rng_name, (local / rng_name).stat().st_size, st.file_sha256(local / rng_name))
        ]
        all_entries = [e for part in rt.all_gather(entries) for e in part]

        def commit() -> int:
            torch.save(
                {"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict(), "step": step, **extra},
                local / "state.pt",
            )
            rt.storage.put_file(local / "state.pt", st.join(uri, "state.pt"))
            files = [
                *all_entries,
                FileEntry("state.pt", (local / "state.pt").stat().st_size, st.file_sha256(local / "state.pt")),
            ]
            manifest = Manifest(
                stage=rt.cfg.stage,
                run={"step": step},
                files=files,
                config={"output_uri": rt.cfg.output_uri, "fingerprint": self.fingerprint},
                inputs=rt.inputs,
            )
            st.commit(rt.storage, uri, manifest)
            self.prune(step)
            return sum(f.size for f in files)

        nbytes = rt.on_rank_zero(commit) or 0
        seconds = time.perf_counter() - started
        rt.metrics.on_checkpoint(seconds, nbytes)
        rt.emit("checkpoint", step=step, uri=uri, bytes=nbytes, seconds=round(seconds, 3))

    def prune(self, newest: int) -> None:
        """Keep the newest K complete checkpoints; drop older ones (manifest first) and debris."""
        complete = 0
        for step in self._steps():
            uri = st.join(self.root, f"step-{step}")
            if step > newest:
                continue  # debris of a later, interrupted attempt is not ours to judge yet
            is_complete = self.rt.storage.exists(st.join(uri, MANIFEST_NAME))
            if is_complete and complete < self.keep:
                complete += 1
                continue
            self.rt.storage.remove(st.join(uri, MANIFEST_NAME))
            self.rt.storage.remove(uri, recursive=True)

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any] | None:
        """Load the newest complete checkpoint into model/optimizer/scheduler/RNG; None if none."""
        rt = self.rt
        found = rt.broadcast(self.latest() if rt.is_main else None)
        if found is None:
            return None
        step, uri = found
        local = st.fresh_dir(rt.scratch / "resume")
        wanted = ["state.pt", f"rng-{rt.rank}.pt"]
        manifest, _ = st.read_manifest(rt.storage, uri)
        present = {f.path for f in manifest.files}
        st.fetch(rt.storage, uri, local, only=[w for w in wanted if w in present])
        state = torch.load(local / "state.pt", map_location="cpu", weights_only=False)
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
        scheduler.load_state_dict(state["scheduler"])
        rng_file = local / f"rng-{rt.rank}.pt"
        if rng_file.exists():  # absent when the world size grew; the data order does not depend on it
            set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
        rt.emit("resumed", step=step, checkpoint=uri)
        return dict(state)
