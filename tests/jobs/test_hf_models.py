"""Bring your own model: plain Hugging Face checkpoints of three families through every stage that
takes a model, their digests in the lineage, `forgeline import`, and every output loaded back by
plain transformers/peft in a fresh process that cannot import forgeline.

The checkpoints are built offline by examples/byo/make_checkpoint.py (a tokenizer trained here,
tiny Llama-, Qwen2- and GPT-2-style configs, a few warm-up steps) and given to the stages as plain
directories with no _MANIFEST.json. Each stage runs as one torchrun process with a handful of
steps: the point is that every family works end to end, not how well it trains.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from testbed.hfload import load_in_fresh_process

from forgeline.cli.main import main as forgeline_main
from forgeline.jobs import storage as st
from forgeline.jobs.contract import MANIFEST_NAME, InputError
from forgeline.operator.artifacts import StoreProbe
from forgeline.operator.policies.inputs import UriCheck
from tests.jobs.conftest import StageRun, launch_argv, parse_events, stage_env, write_config

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("llama", "qwen2", "gpt2")
TARGETS = {"llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"], "gpt2": ["c_attn"]}


def example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("byo_make_checkpoint", REPO / "examples/byo/make_checkpoint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_one(workdir: Path, cfg: dict[str, Any], timeout: float = 300) -> StageRun:
    """One stage under torchrun with a single process (the families, not the gang, are under test)."""
    path, term = write_config(workdir, cfg)
    started = time.monotonic()
    proc = subprocess.run(
        launch_argv(cfg["stage"], path, nproc=1),
        capture_output=True,
        text=True,
        env=stage_env({"FORGELINE_SCRATCH": str(workdir / "scratch")}),
        timeout=timeout,
        start_new_session=True,
    )
    run = StageRun(
        proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started, cfg, events=parse_events(proc.stdout)
    )
    if term.exists() and term.stat().st_size:
        run.termination = json.loads(term.read_text())
    return run


def ok(run: StageRun) -> StageRun:
    assert run.rc == 0, run.explain()
    return run


def stage_config(stage: str, out: Path, model_uri: str, data: Path, steps: int, **rest: Any) -> dict[str, Any]:
    training = {"max_steps": steps, "batch_size": 8, "learning_rate": 3e-3, "checkpoint_interval": 0}
    return {
        "version": 1,
        "stage": stage,
        "output_uri": out.as_uri(),
        "model": {"uri": model_uri},
        "data": {"uri": data.as_uri(), "format": "jsonl", "eval_fraction": 0.1},
        "training": {**training, "log_interval": 5, "warmup_steps": 0, **rest.pop("training", {})},
        **rest,
    }


def lora_settings(family: str, merge: bool = True, targets: list[str] | None = None) -> dict[str, Any]:
    lora = {"r": 4, "alpha": 16, "dropout": 0.0, "merge": merge}
    return {**lora, "target_modules": targets or TARGETS[family]}


def local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


# ----------------------------------------------------------------------------- plain directories (no torch)


def fake_hf_dir(root: Path, weights: bytes = b"\x00weights") -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(weights)
    (root / "tokenizer.json").write_text("{}")
    (root / ".cache").mkdir()
    (root / ".cache" / "lock").write_text("hub download state, not the model")
    return root


def test_plain_hf_directory_digest_depends_on_its_bytes_only(tmp_path: Path) -> None:
    a = fake_hf_dir(tmp_path / "a")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    (b / ".cache" / "lock").write_text("different hidden state")
    manifest, sha = st.read_manifest(st.Storage(), a.as_uri())
    assert st.read_manifest(st.Storage(), b.as_uri())[1] == sha, "same files, other place: same digest"
    assert st.is_synthesized(manifest) and manifest.stage == "huggingface"
    assert [f.path for f in manifest.files] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert manifest.files[1].sha256 == hashlib.sha256(b"\x00weights").hexdigest()
    assert not (a / MANIFEST_NAME).exists(), "reading never writes into the user's directory"
    assert sha == hashlib.sha256(manifest.to_bytes()).hexdigest()
    assert st.read_manifest(st.Storage(), a.as_uri(), f"sha256:{sha}")[1] == sha
    (b / "model.safetensors").write_bytes(b"\x00weightz")
    assert st.read_manifest(st.Storage(), b.as_uri())[1] != sha, "one changed byte, another digest"
    with pytest.raises(InputError, match="the config expects"):
        st.read_manifest(st.Storage(), b.as_uri(), sha)


def test_directory_that_is_neither_artifact_nor_model_is_refused_saying_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match=r"no _MANIFEST\.json and no config\.json: expected a forgeline artifact"):
        st.read_manifest(st.Storage(), (tmp_path / "notes").as_uri())
    bare = fake_hf_dir(tmp_path / "bare")
    (bare / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"has config\.json but no weights"):
        st.read_manifest(st.Storage(), bare.as_uri())
    (bare / "pytorch_model.bin").write_bytes(b"w")
    (bare / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="forgeline import SRC DEST --tokenizer"):
        st.read_manifest(st.Storage(), bare.as_uri())


def test_an_unfinished_upload_is_never_read_as_a_plain_hf_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    st.begin_upload(st.Storage(), out.as_uri())
    shutil.copytree(fake_hf_dir(tmp_path / "model"), out, dirs_exist_ok=True)  # every file landed, no manifest
    with pytest.raises(InputError, match=r"no _MANIFEST\.json: an upload here never finished"):
        st.read_manifest(st.Storage(), out.as_uri())


def test_operator_probe_and_stage_fetch_agree_on_a_plain_directory(tmp_path: Path) -> None:
    src = fake_hf_dir(tmp_path / "model")
    _, sha = st.read_manifest(st.Storage(), src.as_uri())
    assert StoreProbe()(src.as_uri()) == UriCheck(True, digest=f"sha256:{sha}")
    manifest, fetched = st.fetch(st.Storage(), src.as_uri(), tmp_path / "scratch", f"sha256:{sha}")
    assert fetched == sha
    for entry in manifest.files:
        assert (tmp_path / "scratch" / entry.path).read_bytes() == (src / entry.path).read_bytes()
    assert not (tmp_path / "scratch" / ".cache").exists()


def test_forgeline_import_commits_a_verified_artifact_and_merges_a_separate_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = fake_hf_dir(tmp_path / "hf")
    (src / "tokenizer.json").unlink()  # the model came without its tokenizer
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"the": "tokenizer"}')
    (tok / "tokenizer_config.json").write_text("{}")
    (tok / "config.json").write_text("not taken: only tokenizer files come from --tokenizer")
    assert forgeline_main(["import", str(src), str(tmp_path / "store" / "m")]) == 3  # no tokenizer anywhere
    assert "forgeline import SRC DEST --tokenizer" in capsys.readouterr().err

    assert forgeline_main(["import", str(src), (tmp_path / "store" / "m").as_uri(), "--tokenizer", str(tok)]) == 0
    out = capsys.readouterr().out
    dest = tmp_path / "store" / "m"
    digest = hashlib.sha256((dest / MANIFEST_NAME).read_bytes()).hexdigest()
    assert f"digest sha256:{digest}" in out
    manifest, sha = st.read_manifest(st.Storage(), dest.as_uri())
    assert sha == digest and manifest.stage == "import"
    assert {f.path for f in manifest.files} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert (dest / "config.json").read_text() == '{"model_type": "llama"}'
    assert (dest / "tokenizer.json").read_text() == '{"the": "tokenizer"}'
    assert manifest.inputs["source"]["uri"] == src.as_uri()
    assert manifest.inputs["tokenizer"]["uri"] == tok.as_uri()
    assert not (dest / st.PENDING_NAME).exists()
    fetched, _ = st.fetch(st.Storage(), dest.as_uri(), tmp_path / "scratch")
    assert len(fetched.files) == 4


# ----------------------------------------------------------------------------- the three families, trained


@pytest.fixture(scope="module")
def byo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    make = example_module().make
    root = tmp_path_factory.mktemp("byo")
    return {f: make(root / f, family=f, examples=300, steps=30).parent for f in FAMILIES}


@pytest.fixture(scope="module")
def family_runs(byo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, StageRun]]:
    """Per family: continued pretraining, a reward model, LoRA and RLHF (RLOO), all from the plain dir."""
    runs: dict[str, dict[str, StageRun]] = {}
    for family, data in byo.items():
        w = tmp_path_factory.mktemp(f"runs-{family}")
        model = (data / "model").as_uri()
        r = {
            "pretrain": ok(run_one(w / "p", stage_config("pretrain", w / "out-p", model, data / "text.jsonl", 15))),
            "reward": ok(run_one(w / "r", stage_config("reward", w / "out-r", model, data / "prefs.jsonl", 15))),
        }
        lora = lora_settings(family, merge=family != "gpt2")  # one family keeps only the adapter at the root
        r["lora"] = ok(run_one(w / "l", stage_config("lora", w / "out-l", model, data / "sft-pc.jsonl", 15, lora=lora)))
        rlhf = {"algorithm": "rloo", "generations_per_prompt": 4, "max_completion_length": 8, "kl_beta": 0.05}
        rlhf["reward_model"] = {"uri": r["reward"].config["output_uri"]}
        if family == "qwen2":  # a reward model from elsewhere: any num_labels=1 sequence classifier directory
            foreign = w / "foreign-rm"
            shutil.copytree(local(r["reward"].config["output_uri"]), foreign)
            (foreign / MANIFEST_NAME).unlink()
            (foreign / "forgeline_reward.json").unlink()
            rlhf["reward_model"] = {"uri": foreign.as_uri()}
        cfg = stage_config(
            "rlhf", w / "out-h", model, data / "prefs.jsonl", 3, rlhf=rlhf, training={"learning_rate": 1e-4}
        )
        r["rlhf"] = ok(run_one(w / "h", cfg))
        runs[family] = r
    return runs


def figures(run: StageRun) -> dict[str, float]:
    keep = ["eval_loss_initial", "eval_loss_final", "eval_accuracy_initial", "eval_accuracy_final"]
    keep += ["eval_before_reward", "eval_after_reward"]
    return {k: round(float(run.metrics[k]), 3) for k in keep if k in run.metrics}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.train
@pytest.mark.timeout(1800)  # the first one builds the module's 12 stage runs: about 5 minutes idle, 15 on a busy box
def test_each_family_trains_through_every_stage_from_a_plain_hf_directory(
    family: str, family_runs: dict[str, dict[str, StageRun]], byo: dict[str, Path]
) -> None:
    runs = family_runs[family]
    for stage, run in runs.items():
        print(f"{family} {stage}: {figures(run)} in {run.seconds:.1f}s")
    for stage in ("pretrain", "reward", "lora"):
        m = runs[stage].metrics
        assert m["eval_loss_final"] < m["eval_loss_initial"], (stage, m)
    assert runs["rlhf"].metrics["steps"] == 3 and "eval_after_reward" in runs["rlhf"].metrics
    _, plain_sha = st.read_manifest(st.Storage(), (byo[family] / "model").as_uri())
    for run in runs.values():
        manifest = json.loads((local(run.config["output_uri"]) / MANIFEST_NAME).read_text())
        assert manifest["inputs"]["model"] == {"uri": (byo[family] / "model").as_uri(), "manifest_sha256": plain_sha}
        assert not (byo[family] / "model" / MANIFEST_NAME).exists()
    rm_uri = runs["rlhf"].config["rlhf"]["reward_model"]["uri"]
    _, rm_sha = st.read_manifest(st.Storage(), rm_uri)
    rlhf_manifest = json.loads((local(runs["rlhf"].config["output_uri"]) / MANIFEST_NAME).read_text())
    assert rlhf_manifest["inputs"]["reward_model"] == {"uri": rm_uri, "manifest_sha256": rm_sha}
    assert rm_uri.endswith("foreign-rm") == (family == "qwen2")


@pytest.mark.train
@pytest.mark.timeout(900)
def test_every_output_loads_and_generates_with_plain_transformers_in_a_fresh_process(
    family_runs: dict[str, dict[str, StageRun]], byo: dict[str, Path], tmp_path: Path
) -> None:
    entries = [
        {
            "path": str(local(run.config["output_uri"])),
            "kind": "reward" if stage == "reward" else "lm",
            "base": (byo[family] / "model").as_uri(),
        }
        for family, runs in family_runs.items()
        for stage, run in runs.items()
    ]
    imported = tmp_path / "store" / "imported-qwen2"  # and `forgeline import` of a real checkpoint
    assert forgeline_main(["import", str(byo["qwen2"] / "model"), str(imported)]) == 0
    entries.append({"path": str(imported), "kind": "lm", "base": ""})
    loaded = load_in_fresh_process(entries, tmp_path)
    print(json.dumps(loaded, indent=1))
    assert len(loaded) == 3 * 5 + 1, "per family: pretrain, reward, lora (root and adapter/), rlhf; the import"
    assert all(n >= 1 for n in loaded.values()), loaded


@pytest.mark.train
@pytest.mark.timeout(300)
def test_lora_default_targets_missing_from_gpt2_fail_permanently_naming_the_modules_that_exist(
    byo: dict[str, Path], tmp_path: Path
) -> None:
    data = byo["gpt2"]
    cfg = stage_config("lora", tmp_path / "out", (data / "model").as_uri(), data / "sft-pc.jsonl", 5)
    cfg["lora"] = {"r": 4, "alpha": 16}  # target_modules left at the default, q_proj and v_proj
    run = run_one(tmp_path / "w", cfg)
    assert run.rc == 2, run.explain()
    assert run.termination is not None and run.termination["exit_code"] == 2
    assert "lora.target_modules" in run.termination["error"] and "c_attn" in run.termination["error"]
