"""GPU check: the pretrain stage on a GPT-2-small-shaped model (~124M parameters), bf16, one GPU,
through torchrun with NCCL, for about two minutes; prints tokens/s and MFU.

    python bench/gpu_pretrain.py [--seconds 120] [--batch 32] [--peak-tflops 989]

Shape: 12 layers, hidden 768, 12 heads, context 1024, vocabulary 50,304 (tied embeddings), the
gated MLP sized 2,048 so its parameter count matches GPT-2's 3,072-wide plain MLP: 123.6M in all.
The stage runs unchanged (`python -m forgeline.jobs.launch ... -m forgeline.jobs.pretrain`), its
precision `auto` (bf16 on a bf16-capable GPU). Throughput comes from the arrival times of the
stage's progress lines after the first logging window (warm-up excluded); the run is stopped at
the time budget. MFU = 6 x parameters x tokens/s / the GPU's dense bf16 peak (attention FLOPs
not counted, the usual convention), so it is comparable only on the same GPU type.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS, HIDDEN, HEADS, MLP, VOCAB, CONTEXT = 12, 768, 12, 2048, 50304, 1024
LOG = 10
# Dense bf16 peak FLOP/s by device name (vendor data sheets, without sparsity).
PEAKS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 756e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
}


def parameters() -> int:
    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * MLP + 2 * HIDDEN
    return VOCAB * HIDDEN + LAYERS * per_layer + HIDDEN


def peak_flops(name: str, override: float | None) -> float:
    if override:
        return override * 1e12
    for key, value in PEAKS.items():  # most specific names first
        if key in name:
            return value
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")


def config(out: Path, steps: int, batch: int) -> dict:
    return {
        "version": 1,
        "stage": "pretrain",
        "output_uri": out.as_uri(),
        "model_config": {
            "layers": LAYERS,
            "hidden_size": HIDDEN,
            "heads": HEADS,
            "intermediate_size": MLP,
            "vocab_size": VOCAB,
            "context_length": CONTEXT,
        },
        "tokenizer": {"vocab_size": 4096},
        "data": {"synthetic": {"kind": "corpus", "examples": 60000, "seed": 0}, "eval_fraction": 0.002},
        "training": {
            "max_steps": steps,
            "batch_size": batch,
            "learning_rate": 6e-4,
            "precision": "auto",
            "checkpoint_interval": steps + 1,
            "log_interval": LOG,
            "warmup_steps": 20,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="training time budget")
    parser.add_argument("--batch", type=int, default=32, help="sequences of 1,024 tokens per step")
    parser.add_argument("--steps", type=int, default=100_000, help="upper bound; the time budget ends the run")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no GPU visible: this check needs one (CPU throughput is bench/train_overhead.py)")
    name = torch.cuda.get_device_name(0)
    peak = peak_flops(name, args.peak_tflops)
    with tempfile.TemporaryDirectory(prefix="forgeline-gpu-") as tmp:
        work = Path(tmp)
        cfg = work / "pretrain.json"
        cfg.write_text(json.dumps(config(work / "out", args.steps, args.batch)))
        argv = [
            sys.executable,
            "-m",
            "forgeline.jobs.launch",
            "--standalone",
            "--nproc-per-node=1",
            "-m",
            "forgeline.jobs.pretrain",
            "--config",
            str(cfg),
        ]
        env = {
            **os.environ,
            "PYTHONSAFEPATH": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "FORGELINE_SCRATCH": str(work / "scratch"),
        }
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        arrivals: dict[int, float] = {}
        losses: dict[int, float] = {}
        started: float | None = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith('{"event": "progress"'):
                continue
            event = json.loads(line)
            if event["loss"] is None:
                started = time.perf_counter()
                continue
            arrivals[event["step"]] = time.perf_counter()
            losses[event["step"]] = event["loss"]
            if started is not None and time.perf_counter() - started > args.seconds:
                os.killpg(proc.pid, signal.SIGTERM)
                break
        proc.wait(timeout=120)
    steps = sorted(arrivals)
    if len(steps) < 3:
        raise SystemExit(f"too few progress lines ({len(steps)}); the stage exited {proc.returncode}")
    first, last = steps[0], steps[-1]
    tokens_per_s = (last - first) * args.batch * CONTEXT / (arrivals[last] - arrivals[first])
    n = parameters()
    mfu = 6 * n * tokens_per_s / peak
    print(
        json.dumps(
            {
                "bench": "gpu_pretrain",
                "device": name,
                "parameters": n,
                "precision": "bf16",
                "steps_timed": last - first,
                "tokens_per_s": round(tokens_per_s),
                "mfu": round(mfu, 4),
                "peak_tflops": peak / 1e12,
                "loss_first": losses[first],
                "loss_last": losses[last],
            }
        )
    )
    print(
        f"{name}: {tokens_per_s:,.0f} tokens/s, MFU {mfu:.1%} "
        f"(6 x {n / 1e6:.1f}M params x tokens/s / {peak / 1e12:.0f} TFLOP/s bf16 dense)"
    )


if __name__ == "__main__":
    main()
