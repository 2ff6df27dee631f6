"""Training data: a synthetic "sentiment language" with a hidden true reward, loading records
(jsonl, txt, parquet, a `datasets` save_to_disk directory), and a tokenizer trainer. What each
stage reads from a record, and the preflight that checks it, are in forgeline.jobs.records.

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

from forgeline.jobs.contract import ConfigError, DataConfig, InputError

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


# File suffixes `format: auto` recognises, and the marker files of a `save_to_disk` directory.
SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt", ".parquet": "parquet"}
DATASETS_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _parse(blob: bytes, fmt: str, data: DataConfig, uri: str, limit: int | None) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        records: list[dict[str, Any]] = []
        for n, line in enumerate(blob.decode().splitlines(), 1):
            if limit is not None and len(records) >= limit:
                break
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise InputError(uri, f"line {n} is not valid JSON: {exc}") from None
        return records
    if fmt == "txt":
        return [{data.text_field: line} for line in blob.decode().splitlines() if line.strip()][:limit]
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(blob))
    return list((table if limit is None else table.slice(0, limit)).to_pylist())


def _is_datasets_dir(fs: Any, path: str) -> bool:
    return bool(fs.isdir(path)) and any(fs.exists(f"{path.rstrip('/')}/{m}") for m in DATASETS_MARKERS)


def resolve_format(data: DataConfig, fs: Any, path: str) -> str:
    """`format: auto`: a save_to_disk directory, else the suffix of the file (or of the shards)."""
    if data.format != "auto":
        return data.format
    if _is_datasets_dir(fs, path):
        return "datasets"
    names = [path] if fs.isfile(path) else list(fs.find(path))
    found = {SUFFIX_FORMATS[s] for n in names for s in SUFFIX_FORMATS if n.endswith(s)}
    if len(found) != 1:
        what = f"several ({', '.join(sorted(found))})" if found else "none"
        raise ConfigError(
            "spec.data.format",
            f"cannot tell the format of {data.uri}: record files found: {what}; set jsonl, txt, parquet or datasets",
        )
    return found.pop()


def _load_datasets_dir(fs: Any, path: str, uri: str, limit: int | None) -> list[dict[str, Any]]:
    """A `datasets` save_to_disk directory (a Dataset, or a DatasetDict: its train split)."""
    import tempfile

    from datasets import DatasetDict, load_from_disk

    with tempfile.TemporaryDirectory() as tmp:
        local = path
        if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            local = f"{tmp}/data"
            fs.get(path.rstrip("/") + "/", local, recursive=True)
        try:
            ds = load_from_disk(local)
        except (FileNotFoundError, ValueError) as exc:
            raise InputError(uri, f"not a datasets directory written by save_to_disk ({exc})") from None
        if isinstance(ds, DatasetDict):
            if "train" not in ds and len(ds) != 1:
                raise InputError(uri, f"a DatasetDict with splits {sorted(ds)} and no 'train' split")
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        return list(ds.to_list())


def load_records(data: DataConfig, storage: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """Records from `data.uri` (one file, every `*.<format>` shard under a prefix, or a `datasets`
    directory) or synthetic; with `limit`, only the first records (the preflight)."""
    if data.synthetic is not None:
        s = data.synthetic
        return synthetic_records(s.kind, s.examples if limit is None else min(limit, s.examples), s.seed)
    assert data.uri is not None
    fs, path = storage.fs(data.uri)
    if not fs.exists(path):
        raise InputError(data.uri, "data not found")
    fmt = resolve_format(data, fs, path)
    if fmt == "datasets":
        return _load_datasets_dir(fs, path, data.uri, limit)
    suffixes = tuple(s for s, f in SUFFIX_FORMATS.items() if f == fmt) if data.format == "auto" else ("." + fmt,)
    files = [path] if fs.isfile(path) else sorted(p for p in fs.find(path) if p.endswith(suffixes))
    if not files:
        raise InputError(data.uri, f"no *.{fmt} shards under this prefix")
    records: list[dict[str, Any]] = []
    for f in files:
        if limit is not None and len(records) >= limit:
            break
        left = None if limit is None else limit - len(records)
        records.extend(_parse(fs.cat_file(f), fmt, data, data.uri, left))
    return records


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
