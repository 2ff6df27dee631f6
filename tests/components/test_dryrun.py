"""`forgeline torchx --dryrun` for Slurm and Kubernetes: what a user needs to see before submitting.

GPUs and nodes as the scheduler will allocate them, torchrun's rendezvous (the PET_* contract the
operator's pods get), the storage credentials by name and never by value, and each stage's output
URI handed to the next. Nothing is submitted: no Slurm and no cluster are needed.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forgeline.api.stageconfig import ResolvedInput
from forgeline.cli.main import main
from tests.components.conftest import tiny_jobs, write_stage_config

SECRET_VALUE = "never-print-this-secret-value"
STORE = "s3://team-bucket/forgeline"

GPU_PIPELINE = """
apiVersion: forgeline.io/v1alpha1
kind: PretrainJob
metadata: {name: base}
spec:
  model:
    config: {layers: 2, hiddenSize: 64, heads: 4, vocabSize: 512, contextLength: 64}
  data: {synthetic: {examples: 4000}}
  training: {maxSteps: 300, batchSize: 8}
  storage: {credentialsSecret: s3-creds}
  resources: {nodes: 2, gpusPerNode: 8, cpu: "32", memory: 256Gi}
---
apiVersion: forgeline.io/v1alpha1
kind: LoRAJob
metadata: {name: tuned}
spec:
  model: {fromJob: {kind: PretrainJob, name: base}}
  data: {synthetic: {examples: 1000}}
  training: {maxSteps: 100, batchSize: 8}
  storage: {credentialsSecret: s3-creds}
  resources: {nodes: 1, gpusPerNode: 4}
"""

BASE_OUTPUT = f"{STORE}/default/pretrainjob/base"


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Credentials in the submitting environment, as on a Slurm login node: the dry run must name
    # them and never print them.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SECRET_VALUE)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_VALUE)
    path = tmp_path / "pipeline.yaml"
    path.write_text(GPU_PIPELINE)
    return path


def dryrun(pipeline: Path, capsys: pytest.CaptureFixture[str], scheduler: str, *extra: str) -> str:
    code = main(["torchx", str(pipeline), "--scheduler", scheduler, "--dryrun", "--store", STORE, *extra])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert SECRET_VALUE not in out + err
    return out


def stage_sections(out: str) -> dict[str, str]:
    """The dry run's text per stage (`--- Kind/name: would submit ...` headers)."""
    parts = re.split(r"^--- (\S+): would submit.*$", out, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def stage_configs(text: str) -> list[dict]:
    """The stage configs the nodes will write and read (one per replica, in the command)."""
    return [json.loads(m) for m in re.findall(r"'(\{\"data\".*?\})'", text)]


# torchx asks `sinfo` for the Slurm version to choose between --gpus-per-node and --gpus-per-task.
@pytest.mark.filterwarnings("ignore:Error running. .sinfo --version.:RuntimeWarning")
def test_slurm_dryrun_asks_for_every_node_with_its_gpus_and_rendezvous(
    pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stages = stage_sections(dryrun(pipeline, capsys, "slurm", "--scheduler-args", "partition=gpu,time=2:00:00"))
    assert list(stages) == ["PretrainJob/base", "LoRAJob/tuned"]
    base = stages["PretrainJob/base"]
    # One heterogeneous group per node, each asking for the node's 8 GPUs, 32 CPUs and memory.
    groups = re.findall(r"^#SBATCH (--job-name=.*)$", base, flags=re.MULTILINE)
    assert len(groups) == 2
    for group in groups:
        assert re.search(r"--gpus-per-(node|task)=8\b", group), group
        assert "--cpus-per-task=32" in group and "--mem=262144" in group and "--partition=gpu" in group
    # torchrun's rendezvous: 2 nodes x 8 processes, node rank per replica, rank 0's host and port.
    assert base.count("PET_NNODES=2,PET_NPROC_PER_NODE=8") == 2
    assert "PET_NODE_RANK=0," in base and "PET_NODE_RANK=1," in base
    assert base.count("PET_MASTER_PORT=29500") == 2 and base.count('PET_RDZV_ID="$SLURM_JOB_ID"') == 2
    assert 'export PET_MASTER_ADDR="${SLURM_JOB_NODELIST_HET_GROUP_0:-localhost}"' in base
    assert "exec python -m forgeline.jobs.launch -m forgeline.jobs.pretrain" in base
    # Credentials: required by name where the job runs; the spec never carries them.
    assert ': "${AWS_ACCESS_KEY_ID:?' in base and ': "${AWS_SECRET_ACCESS_KEY:?' in base
    configs = stage_configs(base)
    assert len(configs) == 2 and configs[0] == configs[1]
    assert configs[0]["output_uri"] == BASE_OUTPUT
    assert configs[0]["training"]["batch_size"] == 8 * 16  # the spec's is per process: x 2 nodes x 8
    # The LoRA stage reads the pretrain output (no digest yet in a dry run: nothing ran).
    (lora_config,) = stage_configs(stages["LoRAJob/tuned"])
    assert lora_config["model"] == {"uri": BASE_OUTPUT, "digest": None}
    assert lora_config["output_uri"] == f"{STORE}/default/lorajob/tuned"


def test_kubernetes_dryrun_references_the_storage_secret_on_every_node(
    pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = dryrun(pipeline, capsys, "kubernetes", "--scheduler-args", "queue=default,validate_spec=False")
    stages = stage_sections(out)
    job = yaml.safe_load(stages["PretrainJob/base"].split("\n", 1)[1])
    assert job["kind"] == "Job" and job["apiVersion"].startswith("batch.volcano.sh/")
    tasks = job["spec"]["tasks"]
    assert len(tasks) == 2
    for rank, task in enumerate(tasks):
        (container,) = task["template"]["spec"]["containers"]
        assert container["image"] == "ghcr.io/forgeline/trainer:0.1.0"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert container["resources"]["limits"]["cpu"] == "32000m"
        # The storage secret by reference; its values reach only the kubelet.
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        env = {e["name"]: e for e in container["env"]}
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
        assert ': "${AWS_SECRET_ACCESS_KEY:?' in container["command"][2]
        assert env["PET_NNODES"]["value"] == "2" and env["PET_NPROC_PER_NODE"]["value"] == "8"
        assert env["PET_NODE_RANK"]["value"] == str(rank)
        assert env["PET_MASTER_PORT"]["value"] == "29500"
        assert env["PET_RDZV_ID"]["value"] == job["metadata"]["name"]
        command = container["command"]
        assert command[:2] == ["bash", "-c"]
        rank0 = "TORCHX_RANK0_HOST" if rank == 0 else "VC_PRETRAIN_0_HOSTS"
        assert f'export PET_MASTER_ADDR="${{{rank0}:-localhost}}"' in command[2]
        assert json.loads(command[4])["output_uri"] == BASE_OUTPUT
    lora = yaml.safe_load(stages["LoRAJob/tuned"].split("\n", 1)[1])
    (task,) = lora["spec"]["tasks"]
    (container,) = task["template"]["spec"]["containers"]
    assert json.loads(container["command"][4])["model"]["uri"] == BASE_OUTPUT


def test_torchx_run_finds_a_stage_component_by_module_and_function(tmp_path: Path) -> None:
    """`torchx run forgeline.components.stages:pretrain --config FILE` (torchx's own discovery,
    docstring and argument checks) builds the gang the config asks for."""
    config = write_stage_config(tiny_jobs()["pretrain"], STORE, tmp_path / "stage.json")
    torchx = Path(sys.executable).with_name("torchx")
    argv = [str(torchx), "run", "--dryrun", "-s", "slurm", "forgeline.components.stages:pretrain",
            "--config", str(config), "-j", "2x4", "--gpu", "4", "--storage_credentials", "env"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PET_NNODES=2,PET_NPROC_PER_NODE=4") == 2, proc.stdout
    assert re.search(r"--gpus-per-(node|task)=4\b", proc.stdout)
    assert ': "${AWS_SECRET_ACCESS_KEY:?' in proc.stdout
    assert "forgeline.jobs.launch -m forgeline.jobs.pretrain" in proc.stdout


def test_torchx_run_refuses_a_config_for_another_stage(tmp_path: Path) -> None:
    lora = tiny_jobs()["lora"]
    config = write_stage_config(lora, STORE, tmp_path / "stage.json", {"model": ResolvedInput(BASE_OUTPUT)})
    torchx = Path(sys.executable).with_name("torchx")
    argv = [str(torchx), "run", "--dryrun", "-s", "local_cwd", "forgeline.components.stages:pretrain",
            "--config", str(config)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "forgeline.components.stages:lora" in proc.stdout + proc.stderr, shlex.join(argv)
