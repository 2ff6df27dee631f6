"""render, table-tested: one job + one attempt -> ConfigMap, headless Service, Indexed Job (and,
where the cluster serves them, the PodGroup that places the attempt as a gang)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from testbed.builders import job as parsed
from testbed.builders import job_body

from forgeline.api import torchrun
from forgeline.api.kinds import API_VERSION
from forgeline.api.stageconfig import ResolvedInput
from forgeline.jobs.contract import parse_config
from forgeline.jobs.errors import EXIT_BAD_CONFIG, EXIT_MISSING_INPUT
from forgeline.operator.render import (
    CONTAINER,
    KUEUE_QUEUE_LABEL,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_KIND,
    LABEL_RANK,
    NCCL_DEFAULTS,
    RUN_AS_USER,
    SCRATCH_MOUNT,
    Owner,
    RenderSettings,
    child_name,
    render_attempt,
)

ROOT = Path(__file__).parents[2]
UID = "0b5e-uid"
SETTINGS = RenderSettings(image="trainer:test", store="s3://store", metrics_port=9400)
GANG = replace(SETTINGS, gang_scheduling=True)


def make(kind: str = "PretrainJob", name: str = "base", **spec: Any) -> Any:
    """A parsed job of `kind` in namespace team-a; `spec` keys replace the builder's defaults."""
    return parsed(job_body(kind, name, namespace="team-a", data={"synthetic": {"examples": 100}}, **spec))


def render(job: Any = None, attempt: int = 1, owner: Owner | None = None, **kw: Any) -> dict[str, dict[str, Any]]:
    job = job or make()
    objs = render_attempt(job, owner or Owner(UID), attempt, kw.pop("inputs", {}), kw.pop("settings", SETTINGS))
    return {o["kind"]: o for o in objs}


def pod_spec(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objs["Job"]["spec"]["template"]["spec"]


def env_of(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod_spec(objs)["containers"][0]["env"]}


def test_attempt_is_config_map_service_and_job_with_one_name() -> None:
    objs = render_attempt(make(), Owner(UID), 3, {}, SETTINGS)
    assert [o["kind"] for o in objs] == ["ConfigMap", "Service", "Job"]
    assert {o["metadata"]["name"] for o in objs} == {"base-pretrain-a3"}
    assert {o["metadata"]["namespace"] for o in objs} == {"team-a"}


@pytest.mark.parametrize(
    ("kind", "attempt", "expected"),
    [
        ("PretrainJob", 1, "base-pretrain-a1"),
        ("LoRAJob", 1, "base-lora-a1"),
        ("RewardModelJob", 12, "base-reward-a12"),
        ("RLHFJob", 2, "base-rlhf-a2"),
    ],
)
def test_child_names_differ_by_kind_and_attempt(kind: str, attempt: int, expected: str) -> None:
    assert child_name(make(kind), attempt) == expected


def test_longest_name_still_gives_dns_label_hostnames() -> None:
    job = make(name="a" * 40)
    assert len(f"{child_name(job, 999)}-1023") <= 63


def test_every_child_is_owned_by_the_job_and_labelled() -> None:
    for obj in render().values():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": API_VERSION,
            "kind": "PretrainJob",
            "name": "base",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        labels = obj["metadata"]["labels"]
        assert labels[LABEL_JOB] == "base"
        assert labels[LABEL_KIND] == "PretrainJob"
        assert labels[LABEL_ATTEMPT] == "1"


@pytest.mark.parametrize("nodes", [1, 3, 16])
def test_with_gang_scheduling_an_attempt_is_one_pod_group_of_all_its_nodes(nodes: int) -> None:
    objs = render_attempt(make(resources={"nodes": nodes}), Owner(UID, labels={"team": "nlp"}), 2, {}, GANG)
    assert [o["kind"] for o in objs] == ["ConfigMap", "Service", "PodGroup", "Job"], "the group exists before its pods"
    by_kind = {o["kind"]: o for o in objs}
    group, batch = by_kind["PodGroup"], by_kind["Job"]
    assert group["apiVersion"] == "scheduling.k8s.io/v1alpha2"
    assert group["metadata"] == batch["metadata"], "named, labelled and owned like the attempt's Job"
    assert group["metadata"]["name"] == "base-pretrain-a2" and group["metadata"]["labels"]["team"] == "nlp"
    assert group["spec"] == {"schedulingPolicy": {"gang": {"minCount": nodes}}}
    assert pod_spec(by_kind)["schedulingGroup"] == {"podGroupName": "base-pretrain-a2"}


def test_without_gang_scheduling_there_is_no_pod_group_and_pods_join_none() -> None:
    objs = render()
    assert "PodGroup" not in objs
    assert "schedulingGroup" not in pod_spec(objs)


def test_gang_scheduling_changes_nothing_else_of_the_attempt() -> None:
    plain, gang = render(), render(settings=GANG)
    del gang["PodGroup"], pod_spec(gang)["schedulingGroup"]
    assert gang == plain


def test_config_map_holds_a_stage_config_the_training_side_accepts() -> None:
    inputs = {"model": ResolvedInput("s3://store/team-a/pretrainjob/base", "sha256:" + "c" * 64)}
    objs = render(make("LoRAJob", name="tuned"), attempt=2, inputs=inputs)
    config = parse_config(json.loads(objs["ConfigMap"]["data"]["stage.json"]))
    assert config.stage == "lora"
    assert config.run.attempt == 2 and config.run.namespace == "team-a"
    assert config.output_uri == "s3://store/team-a/lorajob/tuned"
    assert config.model is not None and config.model.digest == "sha256:" + "c" * 64
    assert config.observability.metrics_port == 9400
    assert config.observability.termination_message_path is None  # the kubelet's default path


def test_service_is_headless_and_publishes_not_ready_addresses() -> None:
    svc = render()["Service"]["spec"]
    assert svc["clusterIP"] == "None"
    assert svc["publishNotReadyAddresses"] is True
    assert svc["selector"] == {
        LABEL_JOB: "base",
        LABEL_KIND: "PretrainJob",
        LABEL_ATTEMPT: "1",
        "batch.kubernetes.io/job-completion-index": "0",  # rank 0's name is the one torchrun dials
    }
    assert svc["ports"][0]["port"] == 29500


@pytest.mark.parametrize("nodes", [1, 4, 64])
def test_job_is_indexed_with_one_pod_per_node_and_no_retries(nodes: int) -> None:
    spec = render(make(resources={"nodes": nodes}))["Job"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes
    assert spec["backoffLimit"] == 0
    assert "suspend" not in spec


def test_pod_failure_policy_fails_on_permanent_codes_and_ignores_disruptions() -> None:
    rules = render()["Job"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_BAD_CONFIG, EXIT_MISSING_INPUT]},
    }
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert pod_spec(render())["restartPolicy"] == "Never"


def test_env_contract_for_a_4_node_8_gpu_job() -> None:
    env = env_of(render(make(resources={"nodes": 4, "gpusPerNode": 8}), attempt=2))
    assert env[torchrun.PET_NNODES] == "4"
    assert env[torchrun.PET_NPROC_PER_NODE] == "8"
    assert env[torchrun.PET_NODE_RANK] == {"fieldRef": {"fieldPath": f"metadata.annotations['{LABEL_RANK}']"}}
    assert env[torchrun.PET_MASTER_ADDR] == "base-pretrain-a2-0.base-pretrain-a2"
    assert env[torchrun.PET_MASTER_PORT] == "29500"
    assert env[torchrun.PET_RDZV_ID] == f"{UID}-2"
    assert env["HF_HUB_OFFLINE"] == "1"
    for name in torchrun.TORCH_PROCESS_ENV:
        assert name not in env  # node-level RANK/WORLD_SIZE confuse torch (kubeflow/trainer#1790)


def test_rendezvous_id_changes_with_every_attempt() -> None:
    ids = {env_of(render(attempt=n))[torchrun.PET_RDZV_ID] for n in (1, 2, 3)}
    assert len(ids) == 3


def test_procs_per_node_defaults_to_one_without_gpus() -> None:
    procs = torchrun.PET_NPROC_PER_NODE
    assert env_of(render(make(resources={"gpusPerNode": 0})))[procs] == "1"
    assert env_of(render(make(resources={"gpusPerNode": 8, "procsPerNode": 2})))[procs] == "2"


def test_user_env_overrides_nccl_defaults_and_comes_after_them() -> None:
    job = make(resources={"env": [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "MY_FLAG", "value": "1"}]})
    env = env_of(render(job))
    assert env["NCCL_DEBUG"] == "INFO"
    assert env["MY_FLAG"] == "1"
    names = [e["name"] for e in pod_spec(render(job))["containers"][0]["env"]]
    assert names.count("NCCL_DEBUG") == 1
    for key, value in NCCL_DEFAULTS.items():
        if key != "NCCL_DEBUG":
            assert env[key] == value


def test_contract_variables_come_last_so_nothing_can_shadow_them() -> None:
    names = [e["name"] for e in pod_spec(render())["containers"][0]["env"]]
    assert names[-1] == torchrun.FORGELINE_TERMINATION_MESSAGE_PATH
    names = names[:-1]
    assert names[-6:] == [
        torchrun.PET_NNODES,
        torchrun.PET_NPROC_PER_NODE,
        torchrun.PET_NODE_RANK,
        torchrun.PET_MASTER_ADDR,
        torchrun.PET_MASTER_PORT,
        torchrun.PET_RDZV_ID,
    ]
    assert all(n in torchrun.RESERVED_ENV for n in names[-6:])


def test_storage_credentials_only_through_secret_key_refs() -> None:
    job = make(storage={"credentialsSecret": "s3-creds", "endpoint": "http://s3.local:8333"})
    env = env_of(render(job))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"secretKeyRef": {"name": "s3-creds", "key": key}}
    text = json.dumps(render(job))
    assert "s3-creds" in text and '"value": "s3-creds"' not in text


def test_no_credentials_without_a_secret() -> None:
    assert "AWS_ACCESS_KEY_ID" not in env_of(render())


def test_shm_is_a_memory_empty_dir_sized_from_the_spec() -> None:
    objs = render(make(resources={"shmSize": "16Gi"}))
    volumes = {v["name"]: v for v in pod_spec(objs)["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    mounts = {m["mountPath"]: m["name"] for m in pod_spec(objs)["containers"][0]["volumeMounts"]}
    assert mounts["/dev/shm"] == "dshm"
    assert mounts["/etc/forgeline"] == "config"
    assert volumes["config"]["configMap"]["name"] == "base-pretrain-a1"


@pytest.mark.parametrize(
    ("resources", "limits", "tolerations"),
    [
        (
            {"gpusPerNode": 8},
            {"nvidia.com/gpu": "8"},
            [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        ),
        ({"gpusPerNode": 0}, None, None),
        (
            {"gpusPerNode": 1, "cpu": 4, "memory": "32Gi", "tolerations": [{"key": "spot", "operator": "Exists"}]},
            {"nvidia.com/gpu": "1", "cpu": "4", "memory": "32Gi"},
            [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "spot", "operator": "Exists"},
            ],
        ),
    ],
)
def test_gpu_limits_and_tolerations(resources: dict[str, Any], limits: Any, tolerations: Any) -> None:
    spec = pod_spec(render(make(resources=resources)))
    assert spec["containers"][0]["resources"].get("limits") == limits
    assert spec.get("tolerations") == tolerations


def test_users_scheduling_fields_pass_through() -> None:
    term = {"matchExpressions": [{"key": "gpu.example.com/class", "operator": "In", "values": ["h100"]}]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}
    job = make(
        resources={
            "nodeSelector": {"pool": "h100"},
            "affinity": affinity,
            "priorityClassName": "training-high",
            "schedulerName": "volcano",
        }
    )
    spec = pod_spec(render(job))
    assert spec["nodeSelector"] == {"pool": "h100"}
    required = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"][0]["matchExpressions"] == term["matchExpressions"]
    assert spec["priorityClassName"] == "training-high"
    assert spec["schedulerName"] == "volcano"


def test_pods_get_no_api_token_and_a_restrictive_security_context() -> None:
    spec = pod_spec(render())
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsUser"] == RUN_AS_USER != 0
    ctx = spec["containers"][0]["securityContext"]
    assert ctx == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec


def test_everything_the_trainer_writes_lands_on_the_scratch_empty_dir() -> None:
    """The root filesystem is read-only: HOME, the Hugging Face and Triton caches and the stage's
    scratch (FORGELINE_SCRATCH) all point into the /tmp emptyDir, so nothing writes elsewhere."""
    objs = render()
    spec, env = pod_spec(objs), env_of(objs)
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts[SCRATCH_MOUNT]]
    for name in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TRITON_CACHE_DIR", "FORGELINE_SCRATCH"):
        assert env[name] == SCRATCH_MOUNT or env[name].startswith(SCRATCH_MOUNT + "/"), name
    writable = {path for path, name in mounts.items() if "emptyDir" in volumes[name]}
    assert writable == {SCRATCH_MOUNT, "/dev/shm"}


def test_env_value_from_renders_as_the_core_v1_source() -> None:
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    rendered = env_of(render(make(resources={"env": env})))
    assert rendered["TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert rendered["POD"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize(
    "key",
    [
        "job-name",
        "controller-uid",
        "batch.kubernetes.io/job-name",
        "kubernetes.io/x",
        "node.k8s.io/y",
        "forgeline.io/z",
    ],
)
def test_kubernetes_managed_metadata_never_reaches_the_children(key: str) -> None:
    owner = Owner(UID, labels={key: "spoofed", "team": "nlp"}, annotations={key: "spoofed"})
    objs = render(owner=owner)
    template = objs["Job"]["spec"]["template"]["metadata"]
    for meta in (template, objs["Job"]["metadata"], objs["Service"]["metadata"]):
        assert meta["labels"].get(key) != "spoofed"
        assert (meta.get("annotations") or {}).get(key) != "spoofed"
    assert template["labels"]["team"] == "nlp"


def test_recommended_app_labels_and_kueue_names_still_pass_through() -> None:
    labels = {"app.kubernetes.io/part-of": "llm", KUEUE_QUEUE_LABEL: "gpu"}
    template = render(owner=Owner(UID, labels=labels))["Job"]["spec"]["template"]["metadata"]
    assert labels.items() <= template["labels"].items()


def test_pods_are_addressable_under_the_headless_service() -> None:
    spec = pod_spec(render())
    assert spec["subdomain"] == "base-pretrain-a1"


def test_termination_message_carries_the_result() -> None:
    container = pod_spec(render())["containers"][0]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_command_runs_the_stage_under_the_exit_code_preserving_launcher() -> None:
    container = pod_spec(render(make("RewardModelJob")))["containers"][0]
    assert container["command"] == ["python", "-m", "forgeline.jobs.launch"]
    assert container["args"] == ["-m", "forgeline.jobs.reward", "--config", "/etc/forgeline/stage.json"]
    assert container["image"] == "trainer:test"
    assert pod_spec(render(make(resources={"image": "mine:1"})))["containers"][0]["image"] == "mine:1"


def test_kueue_queue_label_passes_through_and_the_job_starts_suspended() -> None:
    owner = Owner(UID, labels={KUEUE_QUEUE_LABEL: "gpu-queue", "team": "nlp"}, annotations={})
    objs = render(owner=owner)
    assert objs["Job"]["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert objs["Job"]["spec"]["template"]["metadata"]["labels"]["team"] == "nlp"
    assert objs["Job"]["spec"]["suspend"] is True


def test_private_metadata_stays_on_the_job_object() -> None:
    owner = Owner(
        UID,
        labels={LABEL_JOB: "spoofed", "app": "x"},
        annotations={
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            "operator.forgeline.io/last-handled-configuration": "{}",
            "example.com/cost-centre": "42",
        },
    )
    template = render(owner=owner)["Job"]["spec"]["template"]["metadata"]
    assert template["labels"][LABEL_JOB] == "base"
    assert template["labels"]["app"] == "x"
    assert template["annotations"] == {"example.com/cost-centre": "42"}


def test_render_is_pure_and_deterministic() -> None:
    assert render() == render()


def test_the_label_keys_rendered_are_the_ones_the_docs_and_the_chart_name() -> None:
    """Users select on these keys and the chart's PodMonitor finds rank 0 by them: a renamed
    constant must fail here, not in a dashboard."""
    docs = (ROOT / "docs" / "operator.md").read_text()
    for key in (LABEL_JOB, LABEL_KIND, LABEL_ATTEMPT, LABEL_RANK):
        assert f"`{key}`" in docs, key
    monitor = (ROOT / "charts" / "forgeline" / "templates" / "podmonitor.yaml").read_text()
    assert f"key: {LABEL_JOB}\n" in monitor and f"key: {LABEL_RANK}\n" in monitor
