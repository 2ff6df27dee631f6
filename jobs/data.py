"""Training data: a synthetic "sentiment language" with a hidden true reward, file loading, and a
tokenizer trainer.

Why synthetic: every stage must show a real, measurable effect on a 2-core CPU in seconds, and
RLHF's gain must be checkable against ground truth, not only against the reward model it
optimises (a reward model can be gamed; the hidden reward cannot). The language:
- a prompt names a topic noun through one of several templates;
- a response starts with that noun, then 8-12 slots, each a sentiment adjective (p=0.5; positive
  with a per-document probability p_pos ~ U(0,1)), a noun (0.25) or a verb (0.25);
- the hidden reward r* = (#positive - #negative) / #words, known only to `true_reward`.
Pretraining learns the template, topic copying and sentiment persistence; preference pairs
prefer the higher r*; the LoRA target ("weather reports") uses words that never occur in the
corpus, so adaptation is visible as a large loss drop on them.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from typing import Any

from forgeline.jobs.contract import DataConfig, InputError

POSITIVE = [
    "good",
    "warm",
    "bright",
    "happy",
    "kind",
    "sweet",
    "calm",
    "fresh",
    "gentle",
    "brave",
    "lovely",
    "clean",
    "joyful",
    "proud",
    "friendly",
    "great",
]
NEGATIVE = [
    "bad",
    "cold",
    "dark",
    "sad",
    "cruel",
    "bitter",
    "angry",
    "stale",
    "harsh",
    "weak",
    "ugly",
    "dirty",
    "gloomy",
    "rude",
    "nasty",
    "awful",
]
NOUNS = [
    "cat",
    "dog",
    "house",
    "tree",
    "river",
    "city",
    "garden",
    "car",
    "book",
    "song",
    "road",
    "school",
    "market",
    "forest",
    "bridge",
    "train",
    "window",
    "door",
    "lake",
    "hill",
    "village",
    "kitchen",
    "field",
    "boat",
]
VERBS = ["runs", "sings", "grows", "moves", "shines", "waits", "falls", "stands", "turns", "rests"]
WEATHER = ["rain", "snow", "wind", "storm", "cloud", "sunny", "foggy", "thunder"]
TEMPLATES = ["tell me about the {}", "describe the {}", "what about the {}", "say something on the {}"]
SFT_WORDS = ["weather", "forecast", "for", "the", "brings", "and", "later", "then", "today"]
SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>"]
LEXICON = frozenset(
    POSITIVE + NEGATIVE + NOUNS + VERBS + WEATHER + SFT_WORDS + " ".join(TEMPLATES).replace("{}", "").split()
)


def prompt_text(template: int, noun: str) -> str:
    return f"<|user|> {TEMPLATES[template].format(noun)}<|assistant|>"


def response(rng: random.Random, noun: str, p_pos: float) -> str:
    words = [noun]
    for _ in range(rng.randint(8, 12)):
        u = rng.random()
        if u < 0.5:
            words.append(rng.choice(POSITIVE if rng.random() < p_pos else NEGATIVE))
        elif u < 0.75:
            words.append(rng.choice(NOUNS))
        else:
            words.append(rng.choice(VERBS))
    return " " + " ".join(words)


def true_reward(completion: str) -> float:
    """The hidden reward r*: net positive sentiment per word. Only evaluators call this."""
    words = completion.split()
    if not words:
        return 0.0
    pos = sum(w in POSITIVE for w in words)
    neg = sum(w in NEGATIVE for w in words)
    return (pos - neg) / len(words)


def real_word_share(completion: str) -> float:
    """Share of whitespace-separated words that belong to the language (degeneration check)."""
    words = completion.split()
    return sum(w in LEXICON for w in words) / len(words) if words else 0.0


def _sft_completion(rng: random.Random, noun: str) -> str:
    a, b, c = (rng.choice(WEATHER) for _ in range(3))
    return f" forecast for the {noun} brings {a} and {b} later then {c} today"


def synthetic_records(kind: str, examples: int, seed: int) -> list[dict[str, Any]]:
    """Deterministic records of one kind: corpus (text), preferences, prompts, sft."""
    rng = random.Random(f"forgeline-{kind}-{seed}")
    out: list[dict[str, Any]] = []
    while len(out) < examples:
        noun, template = rng.choice(NOUNS), rng.randrange(len(TEMPLATES))
        prompt = prompt_text(template, noun)
        if kind == "corpus":
            out.append({"text": prompt + response(rng, noun, rng.random())})
        elif kind == "preferences":
            a, b = response(rng, noun, rng.random()), response(rng, noun, rng.random())
            if true_reward(a) == true_reward(b):
                continue
            chosen, rejected = (a, b) if true_reward(a) > true_reward(b) else (b, a)
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        elif kind == "prompts":
            out.append({"prompt": prompt})
        elif kind == "sft":
            out.append(
                {"prompt": f"<|user|> weather for the {noun}<|assistant|>", "completion": _sft_completion(rng, noun)}
            )
        else:
            raise ValueError(kind)
    return out


def split_key(record: dict[str, Any], data: DataConfig) -> str:
    """Held-out membership follows the prompt, so held-out prompts are never trained on."""
    return str(record.get(data.prompt_field) or record.get(data.text_field) or json.dumps(record, sort_keys=True))


def split(records: list[dict[str, Any]], data: DataConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    for rec in records:
        h = int(hashlib.sha256(split_key(rec, data).encode()).hexdigest()[:8], 16) / 2**32
        (held if h < data.eval_fraction else train).append(rec)
    return train, held


def _parse(blob: bytes, fmt: str, data: DataConfig, uri: str) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        try:
            return [json.loads(line) for line in blob.decode().splitlines() if line.strip()]
        except ValueError as exc:
            raise InputError(uri, f"not valid JSON lines: {exc}") from None
    if fmt == "txt":
        return [{data.text_field: line} for line in blob.decode().splitlines() if line.strip()]
    import pyarrow.parquet as pq

    return list(pq.read_table(io.BytesIO(blob)).to_pylist())


def load_records(data: DataConfig, storage: Any) -> list[dict[str, Any]]:
    """Records from `data.uri` (one file, or every `*.<format>` shard under a prefix) or synthetic."""
    if data.synthetic is not None:
        s = data.synthetic
        return synthetic_records(s.kind, s.examples, s.seed)
    assert data.uri is not None
    fs, path = storage.fs(data.uri)
    if not fs.exists(path):
        raise InputError(data.uri, "data not found")
    files = [path] if fs.isfile(path) else sorted(p for p in fs.find(path) if p.endswith("." + data.format))
    if not files:
        raise InputError(data.uri, f"no *.{data.format} shards under this prefix")
    records: list[dict[str, Any]] = []
    for f in files:
        records.extend(_parse(fs.cat_file(f), data.format, data, data.uri))
    return records


def require_fields(records: list[dict[str, Any]], fields: list[str], uri: str) -> None:
    for i, rec in enumerate(records[:100]):
        for name in fields:
            if not isinstance(rec.get(name), str):
                raise InputError(uri, f"record {i} lacks a string field {name!r}")


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained offline, as a PreTrainedTokenizerFast.

    The synthetic lexicon is always part of the training text, so every word of the language
    (including the LoRA target words the corpus never shows) is a single token: a split word lets
    RL emit partial-byte tokens (research note, section 3).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lexicon = [" " + " ".join(sorted(LEXICON))] * 50
    tok.train_from_iterator([*texts, *lexicon], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
