"""Load stage outputs the way a user on another machine would: plain transformers and peft only.

    python load_outputs.py OUTPUTS.json

OUTPUTS.json is a list of {"path": local output directory, "kind": "lm" | "reward", ["base_path": a
local copy of the base when its URI is remote,] "base": the
input model's URI}. forgeline is made unimportable first, so anything that needed it would fail.
An "lm" directory that holds an adapter (adapter_config.json at its root, or an `adapter/`
folder) is loaded onto the model its adapter_config.json names, which must be `base`.
Prints one JSON line: {path (or path/adapter): tokens generated, or 1 for a reward model's score}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.modules["forgeline"] = None  # type: ignore[assignment]  # any `import forgeline...` now raises

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

PROMPT = "<|im_start|>user\ntell me about the harbor<|im_end|>\n<|im_start|>assistant\n"


def generate(model: Any, tokenizer: Any) -> int:
    enc = tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return int(out.shape[1] - enc["input_ids"].shape[1])


def adapter(path: Path, base_uri: str, base_path: str | None) -> int:
    """`base_path`: a local copy of the base when its URI is not a local one (s3://)."""
    named = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == base_uri, f"{path}: adapter names {named!r}, not the input model {base_uri!r}"
    base = AutoModelForCausalLM.from_pretrained(base_path or named.removeprefix("file://"))
    return generate(PeftModel.from_pretrained(base, str(path)).eval(), AutoTokenizer.from_pretrained(str(path)))


def reward(path: Path) -> int:
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    with torch.no_grad():
        enc = tokenizer([PROMPT + "the harbor is calm"], return_tensors="pt", add_special_tokens=False)
        scores = model(**enc).logits
    return int(scores.shape == (1, 1))


def load(entry: dict[str, str]) -> dict[str, int]:
    path = Path(entry["path"])
    if entry["kind"] == "reward":
        return {str(path): reward(path)}
    done: dict[str, int] = {}
    if (path / "adapter_config.json").exists():  # lora with merge: false keeps the adapter at the root
        done[str(path)] = adapter(path, entry["base"], entry.get("base_path"))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        done[str(path)] = generate(model, AutoTokenizer.from_pretrained(str(path)))
    if (path / "adapter").is_dir():
        done[str(path / "adapter")] = adapter(path / "adapter", entry["base"], entry.get("base_path"))
    return done


def main() -> None:
    loaded: dict[str, int] = {}
    for entry in json.loads(Path(sys.argv[1]).read_text()):
        loaded.update(load(entry))
    print(json.dumps(loaded))


if __name__ == "__main__":
    main()
