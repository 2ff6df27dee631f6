"""Build a tiny Hugging Face checkpoint and chat data offline, as a user would bring them.

    python examples/byo/make_checkpoint.py [OUT] [--family qwen2|llama|gpt2]

writes (OUT defaults to /tmp/forgeline-byo, which examples/byo/pipeline.yaml reads):
- OUT/model/     a plain HF model directory (config.json, model.safetensors, tokenizer files with a
                 ChatML chat template), briefly trained so it speaks the toy language below;
- OUT/sft.jsonl  chat records {"messages": [user, assistant]} for LoRA;
- OUT/sft-pc.jsonl the same as {"prompt", "completion"} strings;
- OUT/prefs.jsonl preference pairs {"prompt", "chosen", "rejected"} for a reward model and DPO;
- OUT/text.jsonl the chats as plain {"text"} documents, for continued pretraining.

Only torch, tokenizers and transformers: no hub download, no forgeline import. The toy language:
a user asks about a place, the assistant describes it; preferred answers are friendly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PLACES = ["harbor", "market", "valley", "museum", "station", "garden", "island", "castle", "library", "bridge"]
KIND = ["quiet", "bright", "lovely", "calm", "warm", "friendly", "clean", "pleasant"]
UNKIND = ["dull", "grim", "dirty", "noisy", "cold", "awful", "boring", "gloomy"]
ASKS = ["tell me about the {}", "what is the {} like", "describe the {}"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FAMILIES = ("qwen2", "llama", "gpt2")


def answer(rng: random.Random, place: str, words: list[str]) -> str:
    picked = [rng.choice(words) for _ in range(rng.randint(3, 5))]
    return f"the {place} is " + " and ".join(picked)


def records(seed: int, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    sft, prefs = [], []
    for _ in range(n):
        place = rng.choice(PLACES)
        ask = rng.choice(ASKS).format(place)
        sft.append(
            {"messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer(rng, place, KIND)}]}
        )
        prompt = f"<|im_start|>user\n{ask}<|im_end|>\n<|im_start|>assistant\n"
        prefs.append({"prompt": prompt, "chosen": answer(rng, place, KIND), "rejected": answer(rng, place, UNKIND)})
    return sft, prefs


def chat_text(rec: dict[str, Any]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in rec["messages"])


def build_tokenizer(texts: list[str], family: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if family == "gpt2":  # like the real GPT-2: one special token, no pad token
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
        )
    return PreTrainedTokenizerFast(  # like Qwen2: eos ends a turn, pad is its own token
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
    )


def build_model(family: str, tokenizer: Any, context: int = 128) -> Any:
    import transformers as tf

    vocab = len(tokenizer)
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if family == "gpt2":
        ids["bos_token_id"] = tokenizer.eos_token_id  # GPT2Config's default is the real GPT-2's 50256
        config = tf.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=context, **ids)
        return tf.GPT2LMHeadModel(config)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        **ids,
    )
    if family == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))


def warm_up(model: Any, tokenizer: Any, texts: list[str], steps: int, seed: int) -> tuple[float, float]:
    """A few steps of plain LM training, so the checkpoint already speaks the language."""
    import torch

    torch.manual_seed(seed)
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
    blocks = torch.tensor(stream[: len(stream) // 64 * 64]).view(-1, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (16,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make(out: Path, family: str = "qwen2", seed: int = 0, examples: int = 600, steps: int = 60) -> Path:
    import torch

    torch.manual_seed(seed)
    sft, prefs = records(seed, examples)
    texts = [chat_text(r) for r in sft] + [p["prompt"] + p["rejected"] + "<|im_end|>\n" for p in prefs]
    tokenizer = build_tokenizer(texts, family)
    model = build_model(family, tokenizer)
    first, last = warm_up(model, tokenizer, texts, steps, seed)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    write_jsonl(out / "sft.jsonl", sft)
    ask = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    pc = [{"prompt": ask.format(r["messages"][0]["content"]), "completion": r["messages"][1]["content"]} for r in sft]
    write_jsonl(out / "sft-pc.jsonl", pc)
    write_jsonl(out / "prefs.jsonl", prefs)
    write_jsonl(out / "text.jsonl", [{"text": chat_text(r)} for r in sft])
    print(f"{family} checkpoint in {model_dir} (warm-up loss {first:.2f} -> {last:.2f}), data in {out}")
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out", nargs="?", default="/tmp/forgeline-byo", help="output directory (default /tmp/forgeline-byo)"
    )
    parser.add_argument("--family", choices=FAMILIES, default="qwen2", help="architecture; default qwen2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-steps", type=int, default=60, help="LM steps before saving; default 60")
    args = parser.parse_args()
    make(Path(args.out), args.family, args.seed, steps=args.warmup_steps)


if __name__ == "__main__":
    main()
