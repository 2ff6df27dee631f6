"""The synthetic language, its hidden reward, the tokenizer trainer and file-backed data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgeline.jobs import data
from forgeline.jobs.contract import DataConfig, InputError, SyntheticData
from forgeline.jobs.storage import Storage


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
