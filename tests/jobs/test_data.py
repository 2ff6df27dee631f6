"""The synthetic language, its hidden reward, the tokenizer trainer, and real data: formats, record
shapes (chat templates, assistant-only labels) and the preflight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from forgeline.jobs import data, records
from forgeline.jobs.contract import ConfigError, DataConfig, InputError, SyntheticData
from forgeline.jobs.lora import sft_batch
from forgeline.jobs.storage import Storage
from tests.jobs.conftest import StageRun, lora_config, run_stage


def test_synthetic_records_are_deterministic_per_seed() -> None:
    assert data.synthetic_records("corpus", 50, 7) == data.synthetic_records("corpus", 50, 7)
    assert data.synthetic_records("corpus", 50, 7) != data.synthetic_records("corpus", 50, 8)


def test_preference_pairs_prefer_the_higher_hidden_reward() -> None:
    pairs = data.synthetic_records("preferences", 200, 0)
    assert all(data.true_reward(p["chosen"]) > data.true_reward(p["rejected"]) for p in pairs)
    assert all(p["chosen"].split()[0] == p["rejected"].split()[0] for p in pairs), "same topic noun"


def test_hidden_reward_and_real_word_share() -> None:
    assert data.true_reward(" cat good warm bad runs") == pytest.approx(1 / 5)
    assert data.true_reward("") == 0.0
    assert data.real_word_share(" cat good xqzt") == pytest.approx(2 / 3)


def test_tokenizer_keeps_every_word_of_the_language_whole() -> None:
    corpus = [r["text"] for r in data.synthetic_records("corpus", 500, 0)]
    tok = data.train_tokenizer(corpus, 640)
    for word in sorted(data.LEXICON):
        assert len(tok.tokenize(" " + word)) == 1, word  # LoRA's target words too, unseen in the corpus
    ids = tok("<|user|> describe the cat<|assistant|> cat good", add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>")
    assert tok.decode(ids, skip_special_tokens=True).endswith(" cat good")


def test_held_out_prompts_are_never_in_the_training_split() -> None:
    cfg = DataConfig(synthetic=SyntheticData(kind="prompts"), eval_fraction=0.25)
    train, held = data.split(data.synthetic_records("prompts", 1000, 0), cfg)
    assert held and train
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}


@pytest.mark.parametrize("fmt", ["jsonl", "txt", "parquet"])
def test_records_load_from_a_prefix_of_shards(tmp_path: Path, fmt: str) -> None:
    texts = [f"document {i}" for i in range(6)]
    for shard, chunk in enumerate((texts[:3], texts[3:])):
        path = tmp_path / f"part-{shard}.{fmt}"
        if fmt == "jsonl":
            path.write_text("".join(json.dumps({"body": t}) + "\n" for t in chunk))
        elif fmt == "txt":
            path.write_text("\n".join(chunk) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"body": chunk}), path)
    (tmp_path / "README.md").write_text("not a shard")
    cfg = DataConfig(uri=tmp_path.as_uri(), format=fmt, text_field="body")  # type: ignore[arg-type]
    records = data.load_records(cfg, Storage())
    assert [r["body"] for r in records] == texts


def test_missing_data_is_an_input_error_naming_the_uri(tmp_path: Path) -> None:
    uri = (tmp_path / "nowhere").as_uri()
    with pytest.raises(InputError, match="nowhere"):
        data.load_records(DataConfig(uri=uri), Storage())


# ----------------------------------------------------------------------------- real data: formats, shapes, preflight

CHAT = [
    {"role": "user", "content": "describe the cat"},
    {"role": "assistant", "content": "cat good warm"},
    {"role": "user", "content": "tell me about the dog"},
    {"role": "assistant", "content": "dog bad"},
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return data.train_tokenizer([r["text"] for r in data.synthetic_records("corpus", 300, 0)], 640)


def write_records(path: Path, fmt: str, rows: list[dict[str, Any]]) -> Path:
    """Records as a user would have them: a JSONL file, a parquet file, or a save_to_disk directory."""
    if fmt == "jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = path.with_suffix(".parquet")
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "datasets"])
@pytest.mark.parametrize("declared", ["explicit", "auto"])
def test_chat_records_load_from_jsonl_parquet_and_a_save_to_disk_directory(
    tmp_path: Path, fmt: str, declared: str
) -> None:
    rows = [{"messages": CHAT, "id": i} for i in range(5)]
    path = write_records(tmp_path / "chats", fmt, rows)
    cfg = DataConfig(uri=path.as_uri(), format=fmt if declared == "explicit" else "auto")  # type: ignore[arg-type]
    assert data.load_records(cfg, Storage()) == rows
    assert data.load_records(cfg, Storage(), limit=2) == rows[:2]


def test_a_datasets_dict_directory_reads_its_train_split(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([{"text": "a"}]), "test": Dataset.from_list([{"text": "b"}])}).save_to_disk(
        str(tmp_path / "dd")
    )
    cfg = DataConfig(uri=(tmp_path / "dd").as_uri(), format="datasets")
    assert data.load_records(cfg, Storage()) == [{"text": "a"}]


def test_auto_format_refuses_a_prefix_of_mixed_record_files_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "b.txt").write_text("y\n")
    with pytest.raises(ConfigError) as err:
        data.load_records(DataConfig(uri=tmp_path.as_uri(), format="auto"), Storage())
    assert err.value.field_path == "spec.data.format" and "jsonl, txt" in str(err.value)


def test_chat_labels_cover_only_the_assistant_turns(tokenizer: Any) -> None:
    assert records.ensure_chat_template(tokenizer)  # the synthetic tokenizer has none: the default applies
    cfg = DataConfig(uri="file:///d.jsonl")
    (example,) = records.sft_examples(tokenizer, [{"messages": CHAT}], cfg, 64)
    batch = sft_batch([example], tokenizer.pad_token_id, torch.device("cpu"))
    labels = batch["labels"][0]
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    learned = [t for t, label in zip(tokens, labels.tolist(), strict=True) if label != -100]
    assert learned == ["Ġcat", "Ġgood", "Ġwarm", "<|eos|>", "Ġdog", "Ġbad", "<|eos|>"]
    # every label is either the token itself or masked: nothing shifted, user turns and markers masked
    ids = batch["input_ids"][0]
    assert bool(((labels == ids) | (labels == -100)).all())
    assert tokens[labels.tolist().index(-100)] == "<|user|>"


def test_default_chat_template_renders_the_synthetic_prompt_format(tokenizer: Any) -> None:
    records.ensure_chat_template(tokenizer)
    prompt = records.render(tokenizer, CHAT[:1], generation_prompt=True)
    assert prompt == data.prompt_text(1, "cat")  # "<|user|> describe the cat<|assistant|>"
    tokenizer_with_own = data.train_tokenizer(["a b"], 300)
    tokenizer_with_own.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert not records.ensure_chat_template(tokenizer_with_own)  # a model's own template is kept


def test_prompt_completion_strings_learn_the_completion_and_eos_only(tokenizer: Any) -> None:
    cfg = DataConfig(uri="file:///d.jsonl")
    rec = {"prompt": "<|user|> weather for the cat<|assistant|>", "completion": " forecast for the cat"}
    ((ids, labels),) = records.sft_examples(tokenizer, [rec], cfg, 64)
    learned = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
    assert learned == " forecast for the cat<|eos|>"


def test_preference_pairs_as_message_lists_equal_the_string_form(tokenizer: Any) -> None:
    records.ensure_chat_template(tokenizer)
    cfg = DataConfig(uri="file:///d.jsonl")
    user = {"role": "user", "content": "describe the cat"}
    as_chats = {
        "chosen": [user, {"role": "assistant", "content": "cat good"}],
        "rejected": [user, {"role": "assistant", "content": "cat bad"}],
    }
    with_prompt = {
        "prompt": [user],
        "chosen": [{"role": "assistant", "content": "cat good"}],
        "rejected": [{"role": "assistant", "content": "cat bad"}],
    }
    strings = {"prompt": data.prompt_text(1, "cat"), "chosen": " cat good", "rejected": " cat bad"}
    expected = records.preference_triples(tokenizer, [strings], cfg)
    assert records.preference_triples(tokenizer, [as_chats], cfg) == expected
    assert records.preference_triples(tokenizer, [with_prompt], cfg) == expected


def test_rlhf_prompts_from_chats_end_where_the_assistant_answers(tokenizer: Any) -> None:
    records.ensure_chat_template(tokenizer)
    cfg = DataConfig(uri="file:///d.jsonl")
    got = records.prompt_texts(tokenizer, [{"messages": CHAT[:2]}, {"prompt": CHAT[:1]}, {"prompt": "plain"}], cfg)
    assert got == [data.prompt_text(1, "cat")] * 2 + ["plain"]


@pytest.mark.parametrize(
    ("stage", "algorithm", "record", "field"),
    [
        ("pretrain", None, {"body": "x"}, "spec.data.textField"),
        ("lora", None, {"question": "q", "answer": "a"}, "spec.data.messagesField"),
        ("lora", None, {"prompt": "q", "answer": "a"}, "spec.data.completionField"),
        ("reward", None, {"prompt": "q", "good": "a", "rejected": "b"}, "spec.data.chosenField"),
        ("rlhf", "dpo", {"chosen": "a", "bad": "b"}, "spec.data.rejectedField"),
        ("rlhf", "rloo", {"query": "q"}, "spec.data.promptField"),
    ],
)
def test_preflight_names_the_spec_field_and_the_keys_the_record_has(
    stage: str, algorithm: str | None, record: dict[str, Any], field: str
) -> None:
    cfg = DataConfig(uri="file:///d.jsonl")
    with pytest.raises(ConfigError) as err:
        records.preflight([record], cfg, stage, algorithm)
    assert err.value.field_path == field and err.value.exit_code == 2
    assert f"the record's keys: {', '.join(sorted(record))}" in str(err.value)
    assert f"set {field}" in str(err.value)


@pytest.mark.parametrize(
    ("stage", "algorithm", "record"),
    [
        ("pretrain", None, {"text": "x"}),
        ("lora", None, {"messages": CHAT}),
        ("lora", None, {"prompt": CHAT[:1], "completion": CHAT[1:2]}),
        ("reward", None, {"chosen": CHAT[:2], "rejected": CHAT[:2]}),
        ("rlhf", "dpo", {"prompt": "q", "chosen": "a", "rejected": "b"}),
        ("rlhf", "grpo", {"messages": CHAT[:1]}),
    ],
)
def test_preflight_accepts_every_documented_shape(stage: str, algorithm: str | None, record: dict[str, Any]) -> None:
    records.preflight([record], DataConfig(uri="file:///d.jsonl"), stage, algorithm)


def test_validate_data_flag_runs_the_preflight_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from forgeline.cli.main import main

    good = write_records(tmp_path / "chats", "jsonl", [{"messages": CHAT}])
    bad = write_records(tmp_path / "qa", "parquet", [{"question": "q", "answer": "a"}])
    manifest = tmp_path / "jobs.yaml"
    docs = []
    for name, path, fmt in (("good", good, "jsonl"), ("bad", bad, "parquet")):
        docs.append(
            "apiVersion: forgeline.io/v1alpha1\nkind: LoRAJob\n"
            f"metadata: {{name: {name}}}\nspec:\n  model: {{uri: 's3://store/base'}}\n"
            f"  data: {{uri: '{path.as_uri()}', format: {fmt}}}\n"
        )
    manifest.write_text("---\n".join(docs))
    assert main(["validate", str(manifest)]) == 0  # without --data the records are not read
    assert main(["validate", "--data", str(manifest)]) == 1
    out, err = capsys.readouterr()
    assert "LoRAJob/good: data ok" in out
    assert "LoRAJob/bad" in err and "spec.data.messagesField" in err and "answer, question" in err


# ----------------------------------------------------------------------------- stages on user data


def chat_sft_rows(examples: int) -> list[dict[str, Any]]:
    """The synthetic SFT task as chats, the shape real instruction data has."""
    rows = []
    for rec in data.synthetic_records("sft", examples, 2):
        user = rec["prompt"].removeprefix("<|user|> ").removesuffix("<|assistant|>")
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": rec["completion"].strip()},
                ]
            }
        )
    return rows


def test_lora_learns_chat_messages_from_a_save_to_disk_directory(tmp_path: Path, pretrained: StageRun) -> None:
    path = write_records(tmp_path / "chats", "datasets", chat_sft_rows(1200))
    cfg = lora_config((tmp_path / "lora").as_uri(), pretrained.config["output_uri"])
    cfg["data"] = {"uri": path.as_uri(), "format": "auto", "eval_fraction": 0.15}
    cfg["training"].update(epochs=None, max_steps=40, checkpoint_interval=0)
    run = run_stage(tmp_path / "work", cfg)
    assert run.rc == 0, run.explain()
    assert "no chat template; using forgeline's default" in run.stdout
    m = run.metrics
    assert m["eval_loss_final"] <= 0.5 * m["eval_loss_initial"], m  # assistant tokens only, so all new words


def test_a_wrong_field_name_exits_2_before_any_model_is_fetched(tmp_path: Path) -> None:
    path = write_records(tmp_path / "qa", "jsonl", [{"question": "q", "answer": "a"}] * 4)
    cfg = lora_config((tmp_path / "lora").as_uri(), (tmp_path / "no-such-model").as_uri())
    cfg["data"] = {"uri": path.as_uri()}
    run = run_stage(tmp_path / "work", cfg)
    assert run.rc == 2, run.explain()  # the missing model would be exit 3: the data was checked first
    assert run.termination is not None
    message = run.termination["error"]
    assert "spec.data.messagesField" in message and "the record's keys: answer, question" in message
