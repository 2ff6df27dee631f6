"""LoRA stage: peft low-rank adapters on an input LM, trained on SFT data (prompt + completion, or
chat messages rendered with the model's chat template; forgeline.jobs.records).

The loss covers completion tokens only (prompt tokens, and in a chat every turn but the
assistant's, are labelled -100): the adapter should learn to answer, not to reproduce prompts.
Artifact layout:
- `adapter/`: the adapter alone (adapter_config.json, adapter_model.safetensors) plus the tokenizer;
  small, and applied onto the input model named in the manifest's lineage;
- the artifact root: the merged model plus tokenizer when `lora.merge` is true, so any later
  stage can take this artifact as a plain `model` input; otherwise the adapter files.
The merge is checked against the adapter model on held-out data (max |logit difference|).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from forgeline.jobs import data as datamod
from forgeline.jobs import modeling
from forgeline.jobs import records as recordsmod
from forgeline.jobs.contract import ConfigError
from forgeline.jobs.loop import LoopSpec, sharded_eval, token_nll, train_loop
from forgeline.jobs.records import Example
from forgeline.jobs.reward import pad_right
from forgeline.jobs.runtime import Runtime, exit_process, stage_main
from forgeline.jobs.storage import fresh_dir


def sft_batch(items: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ids with their labels (records.sft_examples: -100 wherever there is no loss)."""
    batch = pad_right([ids for ids, _ in items], pad_id, device)
    labels = torch.full_like(batch["input_ids"], -100)
    for row, (_, row_labels) in enumerate(items):
        labels[row, : len(row_labels)] = torch.tensor(row_labels)
    batch["labels"] = labels
    return batch


def merged_logit_gap(adapter_model: torch.nn.Module, merged: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        a = adapter_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    return float((a - b).abs()[mask].max())


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The last name segment of every linear layer (nn.Linear, or GPT-2's Conv1D), the names
    `lora.target_modules` can use for this architecture."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    """Exit 2 before peft does: target names that match no layer of this architecture (GPT-2 has
    c_attn where Llama and Qwen2 have q_proj/v_proj), with the names that do exist."""
    present = linear_module_names(model)
    if not set(targets) & set(present):
        raise ConfigError(
            "lora.target_modules",
            f"{targets} match no layer of this model ({type(model).__name__}); its linear layers are "
            f"named {present}; set spec.lora.targetModules to some of them",
        )


def train(rt: Runtime) -> tuple[Path, dict[str, Any]]:
    from peft import LoraConfig, PeftModel, get_peft_model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    cfg = rt.cfg
    assert cfg.model is not None and cfg.lora is not None
    records = datamod.load_records(cfg.data, rt.storage)
    recordsmod.preflight(records, cfg.data, cfg.stage)  # exit 2 in seconds, before any model is fetched
    base_dir = rt.fetch_input("model", cfg.model)
    tokenizer = modeling.load_tokenizer(base_dir, cfg.model.uri)
    base = modeling.load_causal_lm(base_dir, cfg.model.uri, tokenizer.pad_token_id)
    modeling.name_by_uri(base, cfg.model.uri)  # what adapter_config.json and the model card name
    lc = cfg.lora
    check_targets(base, list(lc.target_modules))
    try:
        model = get_peft_model(
            base,
            LoraConfig(
                r=lc.r,
                lora_alpha=lc.alpha,
                lora_dropout=lc.dropout,
                target_modules=list(lc.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    except ValueError as exc:  # peft's "Target modules ... not found": a config error, not a crash
        raise ConfigError("lora.target_modules", f"{exc}; linear layers: {linear_module_names(base)}") from None
    # The adapter names the model it applies to by its URI, never this pod's scratch path (which
    # get_peft_model copies from the loaded model): adapter_config.json must mean something elsewhere.
    model.peft_config["default"].base_model_name_or_path = cfg.model.uri
    trainable, total = model.get_nb_trainable_parameters()
    if recordsmod.needs_chat_template(records) and recordsmod.ensure_chat_template(tokenizer) and rt.is_main:
        print("forgeline: the tokenizer has no chat template; using forgeline's default (docs/stage-contract.md)")
    train_recs, eval_recs = datamod.split(records, cfg.data)
    max_len = modeling.context_length(base)
    items = recordsmod.sft_examples(tokenizer, train_recs, cfg.data, max_len)
    eval_items = recordsmod.sft_examples(tokenizer, eval_recs or train_recs[:200], cfg.data, max_len)
    wrapped = modeling.wrap(rt, model)
    pad = tokenizer.pad_token_id
    micro = max(1, cfg.training.batch_size // (rt.world * cfg.training.gradient_accumulation))

    def make_batch(indices: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        batch = sft_batch([items[i] for i in indices], pad, rt.device)
        return batch, int(batch["attention_mask"].sum())

    def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return m(**batch).loss

    def nll_items(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = sft_batch([eval_items[i] for i in indices], pad, rt.device)
        logits = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return token_nll(logits, batch["labels"])

    def evaluate() -> dict[str, float]:
        wrapped.eval()
        return {"eval_loss": sharded_eval(rt, len(eval_items), micro, nll_items)}

    metrics = train_loop(rt, LoopSpec(wrapped, len(items), make_batch, loss_fn, evaluate))
    metrics.update(
        trainable_parameters=trainable,
        total_parameters=total,
        trainable_fraction=trainable / total,
        train_examples=len(items),
    )
    state = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out = rt.scratch / "output"

    def save() -> float | None:
        fresh_dir(out)
        adapter_dir = out / "adapter"
        modeling.unwrap(wrapped).save_pretrained(str(adapter_dir), state_dict=state)
        tokenizer.save_pretrained(str(adapter_dir))
        if not lc.merge:
            for f in adapter_dir.iterdir():
                shutil.copy(f, out / f.name)
            return None
        adapter_model = PeftModel.from_pretrained(
            modeling.load_causal_lm(base_dir, cfg.model.uri, pad), str(adapter_dir)
        ).eval()
        merged = (
            PeftModel.from_pretrained(modeling.load_causal_lm(base_dir, cfg.model.uri, pad), str(adapter_dir))
            .merge_and_unload()
            .eval()
        )
        merged.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        probe = sft_batch(eval_items[:16], pad, torch.device("cpu"))
        return merged_logit_gap(adapter_model, merged, probe)

    gap = rt.on_rank_zero(save)
    if gap is not None:
        metrics["merge_max_logit_diff"] = gap
    return out, metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main("lora", train, argv)


if __name__ == "__main__":
    exit_process(main())
