"""The record shapes each stage reads, checked before any training, and turned into model inputs.

What real data looks like, per stage (field names are the spec.data.*Field settings):
- pretrain: a string `text` (or txt lines);
- lora: `prompt` + `completion` (strings, or message lists), or a chat `messages` list;
- reward and dpo: `chosen` + `rejected` (strings, or message lists), with an optional `prompt`;
- rlhf (rloo, grpo): a `prompt` (string or message list) or a chat `messages` list.

A message list is rendered with the model's chat template (the tokenizer's `chat_template`); a
tokenizer without one gets DEFAULT_CHAT_TEMPLATE, and the stage says so in its log. Supervised
chat loss covers the assistant turns only: each assistant turn's characters are found by rendering
the conversation up to it, and tokens are labelled through the tokenizer's offsets, so the mask
is exact for any template whose renderings of a conversation's prefixes are prefixes of it.

`preflight` runs on the first records at stage start (and in `forgeline validate --data`), so a
wrong field name fails in seconds with exit 2, naming the spec field to set and the keys the
records do have, instead of after the models are loaded.
"""

from __future__ import annotations

from typing import Any

from forgeline.jobs.contract import ConfigError, DataConfig, InputError

PREFLIGHT_RECORDS = 20
# The synthetic language's own turn markers, so chat records and plain prompts agree token for token:
# [user "describe the cat", assistant "cat good"] renders as "<|user|> describe the cat<|assistant|> cat good<eos>".
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPEC_FIELD = {
    "text_field": "spec.data.textField",
    "prompt_field": "spec.data.promptField",
    "completion_field": "spec.data.completionField",
    "chosen_field": "spec.data.chosenField",
    "rejected_field": "spec.data.rejectedField",
    "messages_field": "spec.data.messagesField",
}
Example = tuple[list[int], list[int]]  # input ids, labels (-100: no loss)
TRAINING_STAGES = ("pretrain", "reward", "rlhf", "lora")


def is_chat(value: Any) -> bool:
    """A list of {role, content} messages with string values."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )


def _text_or_chat(value: Any) -> bool:
    return isinstance(value, str) or is_chat(value)


def shape_of(stage: str, algorithm: str | None) -> str:
    """pretrain: text; lora: sft; reward and dpo: pairs; rloo and grpo: prompts."""
    if stage == "rlhf":
        return "pairs" if algorithm == "dpo" else "prompts"
    return {"pretrain": "text", "lora": "sft", "reward": "pairs"}[stage]


# ----------------------------------------------------------------------------- preflight


def _missing(data: DataConfig, i: int, rec: dict[str, Any], attr: str, what: str, also: str = "") -> ConfigError:
    name = getattr(data, attr)
    keys = ", ".join(sorted(map(str, rec))) or "none"
    found = f"a {type(rec[name]).__name__} that is not {what}" if name in rec else "no such field"
    return ConfigError(
        SPEC_FIELD[attr],
        f"record {i} of {data.uri or 'the synthetic data'}: field {name!r} must be {what}, found {found}; "
        f"the record's keys: {keys}; set {SPEC_FIELD[attr]} to the field that holds it{also}",
    )


def check_record(shape: str, data: DataConfig, i: int, rec: Any) -> None:
    if not isinstance(rec, dict):
        raise InputError(data.uri or "synthetic", f"record {i} is a {type(rec).__name__}, not an object")
    chat = "a string or a list of {role, content} messages"
    if shape == "text":
        if not isinstance(rec.get(data.text_field), str):
            raise _missing(data, i, rec, "text_field", "a string")
    elif shape == "sft":
        if data.messages_field in rec or data.prompt_field not in rec:
            if not is_chat(rec.get(data.messages_field)):
                also = f" (or {SPEC_FIELD['prompt_field']} and {SPEC_FIELD['completion_field']} for prompt/completion)"
                raise _missing(data, i, rec, "messages_field", "a list of {role, content} messages", also)
            if not any(m["role"] == "assistant" for m in rec[data.messages_field]):
                raise InputError(data.uri or "synthetic", f"record {i}: the chat has no assistant turn to learn from")
            return
        for attr in ("prompt_field", "completion_field"):
            if not _text_or_chat(rec.get(getattr(data, attr))):
                raise _missing(data, i, rec, attr, chat)
    elif shape == "pairs":
        for attr in ("chosen_field", "rejected_field"):
            if not _text_or_chat(rec.get(getattr(data, attr))):
                raise _missing(data, i, rec, attr, chat)
        if data.prompt_field in rec and not _text_or_chat(rec[data.prompt_field]):
            raise _missing(data, i, rec, "prompt_field", chat + " (or left out)")
    elif shape == "prompts":
        if data.messages_field in rec and data.prompt_field not in rec:
            if not is_chat(rec[data.messages_field]):
                raise _missing(data, i, rec, "messages_field", "a list of {role, content} messages")
        elif not _text_or_chat(rec.get(data.prompt_field)):
            also = f" (or {SPEC_FIELD['messages_field']} for a chat)"
            raise _missing(data, i, rec, "prompt_field", chat, also)


def preflight(records: list[Any], data: DataConfig, stage: str, algorithm: str | None = None) -> None:
    """Check the first records have what the stage reads; ConfigError names the spec field to set."""
    if not records:
        raise InputError(data.uri or "synthetic", "no records")
    shape = shape_of(stage, algorithm)
    for i, rec in enumerate(records[:PREFLIGHT_RECORDS]):
        check_record(shape, data, i, rec)


# ----------------------------------------------------------------------------- chat rendering


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template the default one; True when it did."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return str(tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt))


def _strip_eos(tokenizer: Any, text: str) -> str:
    """A rendered answer without the template's final EOS: the stages append one themselves."""
    eos = tokenizer.eos_token or ""
    return text[: -len(eos)] if eos and text.endswith(eos) else text


def assistant_spans(tokenizer: Any, messages: list[dict[str, Any]], full: str) -> list[tuple[int, int]]:
    """Character spans of `full` (the rendered chat) that the assistant turns produce."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        through = render(tokenizer, messages[: i + 1])
        if not (full.startswith(before) and full.startswith(through)):
            raise InputError(
                "chat template",
                "renders a conversation's first turns differently from the start of the whole conversation, "
                "so the assistant turns cannot be located; use a template whose prefixes are stable",
            )
        spans.append((len(before), len(through)))
    return spans


def chat_example(tokenizer: Any, messages: list[dict[str, Any]], max_len: int) -> Example:
    """Ids of the rendered chat, labelled on the assistant turns only (their end-of-turn included)."""
    full = render(tokenizer, messages)
    spans = assistant_spans(tokenizer, messages, full)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [
        t if any(a <= start < b for a, b in spans) else -100
        for t, (start, _) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    return ids[:max_len], labels[:max_len]


def _as_messages(value: Any, role: str) -> list[dict[str, Any]]:
    return list(value) if is_chat(value) else [{"role": role, "content": value}]


# ----------------------------------------------------------------------------- per-stage inputs


def sft_examples(tokenizer: Any, records: list[dict[str, Any]], data: DataConfig, max_len: int) -> list[Example]:
    """LoRA/SFT: chats and chat prompt/completion pairs through the template, plain strings as
    prompt + completion + EOS; loss on the answer only."""
    out: list[Example] = []
    for rec in records:
        prompt, completion = rec.get(data.prompt_field), rec.get(data.completion_field)
        if data.messages_field in rec or data.prompt_field not in rec:  # as preflight decides
            out.append(chat_example(tokenizer, rec[data.messages_field], max_len))
        elif is_chat(prompt) or is_chat(completion):
            messages = _as_messages(prompt, "user") + _as_messages(completion, "assistant")
            out.append(chat_example(tokenizer, messages, max_len))
        else:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a = tokenizer(completion + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            ids = (p + a)[:max_len]
            out.append((ids, ([-100] * len(p) + a)[:max_len]))
    return out


def _common_prefix(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> int:
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return n


def preference_triples(tokenizer: Any, records: list[dict[str, Any]], data: DataConfig) -> list[tuple[str, str, str]]:
    """Reward and DPO: (prompt, chosen answer, rejected answer) as text, the answers without EOS.

    Message lists are rendered with the chat template; a chosen/rejected pair of whole chats with no
    prompt field shares its leading turns as the prompt (trl's implicit-prompt format).
    """
    out = []
    for rec in records:
        prompt, chosen, rejected = rec.get(data.prompt_field), rec[data.chosen_field], rec[data.rejected_field]
        if not (is_chat(prompt) or is_chat(chosen) or is_chat(rejected)):
            out.append((prompt or "", chosen, rejected))
            continue
        c, r = _as_messages(chosen, "assistant"), _as_messages(rejected, "assistant")
        if prompt is None:
            n = _common_prefix(c, r)
            head, c, r = c[:n], c[n:], r[n:]
        else:
            head = _as_messages(prompt, "user")
        prompt_text = render(tokenizer, head, generation_prompt=True) if head else ""
        answers = []
        for tail in (c, r):
            full = render(tokenizer, head + tail)
            if not full.startswith(prompt_text):
                raise InputError("chat template", "renders the prompt differently alone and before an answer")
            answers.append(_strip_eos(tokenizer, full[len(prompt_text) :]))
        out.append((prompt_text, answers[0], answers[1]))
    return out


def prompt_texts(tokenizer: Any, records: list[dict[str, Any]], data: DataConfig) -> list[str]:
    """RLHF prompts: strings as they are; chats rendered up to the assistant's turn."""
    out = []
    for rec in records:
        prompt = rec.get(data.prompt_field)
        if isinstance(prompt, str):
            out.append(prompt)
            continue
        messages = prompt if prompt is not None else rec[data.messages_field]
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # a whole chat: answer its last user turn afresh
        out.append(render(tokenizer, messages, generation_prompt=True))
    return out


def needs_chat_template(records: list[dict[str, Any]]) -> bool:
    """Whether any record holds a message list (then the tokenizer needs a chat template)."""
    return any(is_chat(v) for rec in records for v in rec.values())


def preflight_data(data: DataConfig, stage: str, algorithm: str | None, storage: Any) -> int:
    """Read the first records at `data.uri` and preflight them; returns how many were read."""
    from forgeline.jobs.data import load_records

    head = load_records(data, storage, limit=PREFLIGHT_RECORDS)
    preflight(head, data, stage, algorithm)
    return len(head)
