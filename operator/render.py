"""Render, pure: one job (API model) + one attempt -> the Kubernetes objects that attempt needs.

An attempt is three objects, all owned by the job object and all named `<job>-<stage>-a<N>`:

* a ConfigMap with the stage config (forgeline.jobs.contract), mounted read-only;
* a headless Service (clusterIP None, publishNotReadyAddresses) over rank 0's pod, so its DNS
  name resolves before it is Ready: torchrun's rendezvous dials it while the pods still start
  (the other ranks' names are never dialled, and leaving them out spares the EndpointSlice
  controller a rewrite per pod as a gang starts);
* an Indexed batch/v1 Job, completions = parallelism = nodes, backoffLimit 0. The Job controller
  creates the pods; the podFailurePolicy fails the Job at once on the permanent exit codes (2, 3)
  and ignores disruptions, which the operator turns into a whole-gang restart that costs no
  retry budget (policies/restart.py).

Where the cluster serves the in-tree gang scheduling API (scheduling.k8s.io/v1alpha2, KEP-4671;
`RenderSettings.gang_scheduling`, read from discovery at operator start) an attempt has a fourth
object of the same name: a PodGroup with a gang policy, minCount = nodes, which every pod joins
(spec.schedulingGroup.podGroupName). The scheduler then binds none of the attempt's pods until all
of them fit, so two gangs never hold half of the cluster each. It is applied before the Job (a pod
whose group does not exist yet waits for it) and deleted with the attempt.

The stage name is part of the child name because a PretrainJob and a LoRAJob may share a name in
one namespace. A new attempt is a new name, so a restarted gang never meets a stale peer, DNS
record or rendezvous (PET_RDZV_ID changes too). Nothing here talks to a cluster; reconcile applies
what this returns.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from forgeline.api import torchrun
from forgeline.api.kinds import API_VERSION, Job
from forgeline.api.semantics import managed_key
from forgeline.api.stageconfig import ResolvedInput, build_stage_config, output_uri
from forgeline.jobs.errors import PERMANENT_EXIT_CODES

Obj = dict[str, Any]

LABEL_JOB = "forgeline.io/job"
LABEL_KIND = "forgeline.io/kind"
LABEL_ATTEMPT = "forgeline.io/attempt"
# The Job controller labels each pod with its completion index; that index is the node rank.
LABEL_RANK = "batch.kubernetes.io/job-completion-index"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_RESOURCE = "nvidia.com/gpu"
POD_GROUP_API_VERSION = "scheduling.k8s.io/v1alpha2"

CONTAINER = "trainer"
CONFIG_DIR = "/etc/forgeline"
CONFIG_FILE = "stage.json"
TERMINATION_PATH = "/dev/termination-log"
MASTER_PORT = torchrun.MASTER_PORT
SCRATCH_MOUNT = "/tmp"  # the only writable path besides /dev/shm (an emptyDir)
# The user and group training pods run as (the trainer image's user; restricted Pod Security).
RUN_AS_USER = 1000

# Metadata of the job object that must not reach the pods: kubectl's bookkeeping, ours, kopf's,
# and the keys Kubernetes sets on a Job's pods itself (a user value there would make the API server
# refuse the Job, or worse, let the pods be taken for another Job's): preflight fails a job that sets
# these (api/semantics.py says why), and render never copies them, whatever reaches it.
_PRIVATE_PREFIXES = ("kubectl.kubernetes.io/", "forgeline.io/", "operator.forgeline.io/", "kopf.zalando.org/")

NCCL_DEFAULTS = torchrun.NCCL_DEFAULTS
PROCESS_DEFAULTS: dict[str, str] = {
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_OFFLINE": "1",  # models come from the artifact store, never from the Hub
    "PYTHONDONTWRITEBYTECODE": "1",  # site-packages is on the read-only root filesystem
    # The root filesystem is read-only: everything the trainer, Hugging Face, torch and Triton write
    # goes to the /tmp emptyDir (node-local scratch, gone with the pod).
    "HOME": SCRATCH_MOUNT,
    "XDG_CACHE_HOME": f"{SCRATCH_MOUNT}/.cache",
    "HF_HOME": f"{SCRATCH_MOUNT}/.cache/huggingface",
    "TRITON_CACHE_DIR": f"{SCRATCH_MOUNT}/.cache/triton",
    "FORGELINE_SCRATCH": f"{SCRATCH_MOUNT}/forgeline-scratch",
}


@dataclass(frozen=True)
class RenderSettings:
    """Operator-wide settings (flags of `forgeline operator`), the same for every job."""

    image: str = torchrun.DEFAULT_TRAINER_IMAGE
    store: str = "s3://forgeline"
    metrics_port: int = 9400  # rank 0's metrics port (0: none) ...
    metrics_port_high: int = 0  # ... or, above it, the top of a range (shared network namespaces)
    python: str = "python"
    service_account: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # Storage defaults for jobs whose spec.storage leaves them out, so manifests need no storage
    # fields on a cluster whose operator knows its store (`--storage-endpoint`, `--credentials-secret`).
    storage_endpoint: str | None = None
    credentials_secret: str | None = None
    # Scheduling defaults (`--node-selector`, `--toleration`): a dedicated training node pool,
    # merged under each job's own spec.resources (the job's nodeSelector keys win).
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Obj, ...] = ()
    # Rank 0's rendezvous port: one port (each pod has its own network namespace), or a range to
    # spread over when gangs share a network namespace (hostNetwork pods for RDMA, the test
    # process node): each attempt then takes a port from the range, hashed from uid + attempt.
    rendezvous_ports: tuple[int, int] = (MASTER_PORT, MASTER_PORT)
    # Store prefixes any namespace's jobs may read and write besides `<store>/<namespace>/`
    # (`--allowed-uri-prefix`; policies/preflight.py): shared base models, a common scratch bucket.
    allowed_uri_prefixes: tuple[str, ...] = ()
    # The cluster serves scheduling.k8s.io/v1alpha2 PodGroups (discovery, once at operator start):
    # each attempt is then placed as a gang, all of its pods or none.
    gang_scheduling: bool = False


@dataclass(frozen=True)
class Owner:
    """The job object as the API server knows it (what ownerReferences need)."""

    uid: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def child_name(job: Job, attempt: int) -> str:
    return f"{job.metadata.name}-{job.stage}-a{attempt}"


def children_selector(kind: str, name: str) -> dict[str, str]:
    """The labels every child of job `kind`/`name` carries (list selectors use them)."""
    return {LABEL_JOB: name, LABEL_KIND: kind}


def job_labels(job: Job) -> dict[str, str]:
    return children_selector(job.kind, job.metadata.name)


def attempt_labels(job: Job, attempt: int) -> dict[str, str]:
    return {**job_labels(job), LABEL_ATTEMPT: str(attempt)}


def passthrough(meta: dict[str, str]) -> dict[str, str]:
    """User labels/annotations copied to the children (Kueue's queue name, cost centres, ...)."""
    return {k: v for k, v in meta.items() if not k.startswith(_PRIVATE_PREFIXES) and not managed_key(k)}


def rdzv_id(uid: str, attempt: int) -> str:
    return f"{uid}-{attempt}"


def _port_in(low: int, high: int, seed: str) -> int:
    """Deterministic, so every render of one attempt (a pass that died half-way and the next one)
    and the operator's scrape of it agree."""
    if high <= low:
        return low
    return low + int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16) % (high - low + 1)


def master_port(uid: str, attempt: int, settings: RenderSettings) -> int:
    return _port_in(*settings.rendezvous_ports, rdzv_id(uid, attempt))


def trainer_metrics_port(uid: str, attempt: int, settings: RenderSettings) -> int:
    """Rank 0's metrics port for one attempt (0: no metrics endpoint)."""
    if not settings.metrics_port:
        return 0
    return _port_in(settings.metrics_port, settings.metrics_port_high, f"{rdzv_id(uid, attempt)}-metrics")


def owner_reference(job: Job, owner: Owner) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": job.kind,
        "name": job.metadata.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: Job, owner: Owner, attempt: int) -> Obj:
    return {
        "name": child_name(job, attempt),
        "namespace": job.metadata.namespace or "default",
        "labels": {**passthrough(owner.labels), **attempt_labels(job, attempt)},
        "ownerReferences": [owner_reference(job, owner)],
    }


def render_config_map(
    job: Job, owner: Owner, attempt: int, inputs: dict[str, ResolvedInput], settings: RenderSettings
) -> Obj:
    config = build_stage_config(
        job,
        attempt=attempt,
        output=output_uri(settings.store, job),
        inputs=inputs,
        metrics_port=trainer_metrics_port(owner.uid, attempt, settings),
        endpoint=job.spec.storage.endpoint or settings.storage_endpoint,
        # null: the pod's FORGELINE_TERMINATION_MESSAGE_PATH says where (see _env), so a node that
        # relocates the file (the test process node) relocates the variable with it.
        termination_message_path=None,
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, owner, attempt),
        "data": {CONFIG_FILE: json.dumps(config.to_dict(), indent=2, sort_keys=True)},
    }


def render_service(job: Job, owner: Owner, attempt: int, settings: RenderSettings) -> Obj:
    port = master_port(owner.uid, attempt, settings)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, owner, attempt),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # rank 0 must resolve before it is Ready
            # Rank 0 only: its name is the one torchrun needs, and each pod the Service selects
            # makes the EndpointSlice controller rewrite the slice as that pod starts.
            "selector": {**attempt_labels(job, attempt), LABEL_RANK: "0"},
            "ports": [{"name": "rendezvous", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def _env(job: Job, owner: Owner, attempt: int, settings: RenderSettings) -> list[Obj]:
    name = child_name(job, attempt)
    res = job.spec.resources
    defaults = {**NCCL_DEFAULTS, **PROCESS_DEFAULTS, **settings.extra_env}
    user = {e.name: e for e in res.env}
    env: list[Obj] = [{"name": k, "value": v} for k, v in defaults.items() if k not in user]
    for var in res.env:
        entry: Obj = {"name": var.name}
        if var.value_from is not None:
            entry["valueFrom"] = var.value_from.wire()
        else:
            entry["value"] = var.value or ""
        env.append(entry)
    secret = job.spec.storage.credentials_secret or settings.credentials_secret
    if secret:
        # Credentials only ever arrive by reference: the secret's values never pass through us.
        for key in torchrun.CREDENTIAL_ENV:
            if key not in user:
                env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    # The torchrun contract (api/torchrun.py); validation rejects user variables of these names.
    env += [
        {"name": torchrun.PET_NNODES, "value": str(res.nodes)},
        {"name": torchrun.PET_NPROC_PER_NODE, "value": str(res.procs)},
        {
            "name": torchrun.PET_NODE_RANK,
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{LABEL_RANK}']"}},
        },
        {"name": torchrun.PET_MASTER_ADDR, "value": f"{name}-0.{name}"},
        {"name": torchrun.PET_MASTER_PORT, "value": str(master_port(owner.uid, attempt, settings))},
        {"name": torchrun.PET_RDZV_ID, "value": rdzv_id(owner.uid, attempt)},
        # Where rank 0 leaves its result for the operator: the container's terminationMessagePath.
        {"name": torchrun.FORGELINE_TERMINATION_MESSAGE_PATH, "value": TERMINATION_PATH},
    ]
    return env


def _resources(job: Job) -> Obj:
    res = job.spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.cpu:
        requests["cpu"] = limits["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    if res.gpus_per_node:
        limits[GPU_RESOURCE] = str(res.gpus_per_node)
    out: Obj = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _tolerations(job: Job, settings: RenderSettings) -> list[Obj]:
    tolerations = [t.wire() for t in job.spec.resources.tolerations]
    if job.spec.resources.gpus_per_node:
        tolerations.insert(0, {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations + [dict(t) for t in settings.tolerations if t not in tolerations]


def render_pod_template(job: Job, owner: Owner, attempt: int, settings: RenderSettings) -> Obj:
    res = job.spec.resources
    name = child_name(job, attempt)
    container: Obj = {
        "name": CONTAINER,
        "image": res.image or settings.image,
        "command": [settings.python, "-m", "forgeline.jobs.launch"],
        # torchrun's own flags come from the PET_* variables; -m runs the stage as a module.
        "args": ["-m", f"forgeline.jobs.{job.stage}", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": _env(job, owner, attempt, settings),
        "ports": [
            {"name": "rendezvous", "containerPort": master_port(owner.uid, attempt, settings), "protocol": "TCP"}
        ],
        "resources": _resources(job),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": SCRATCH_MOUNT},
        ],
        "terminationMessagePath": TERMINATION_PATH,
        # The result summary on success; the log tail when a crash left no message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if metrics_port := trainer_metrics_port(owner.uid, attempt, settings):
        container["ports"].append({"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"})
    spec: Obj = {
        "subdomain": name,  # pod hostname <name>-<index> (set by the Job controller) under this Service
        "restartPolicy": "Never",  # the gang restarts as a whole, never one pod in place
        "automountServiceAccountToken": False,  # training pods get no Kubernetes API access
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": name}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if tolerations := _tolerations(job, settings):
        spec["tolerations"] = tolerations
    if node_selector := {**settings.node_selector, **(res.node_selector or {})}:
        spec["nodeSelector"] = node_selector
    if res.affinity is not None and (affinity := res.affinity.wire()):
        spec["affinity"] = affinity
    if res.priority_class_name:
        spec["priorityClassName"] = res.priority_class_name
    if res.scheduler_name:
        spec["schedulerName"] = res.scheduler_name
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if settings.gang_scheduling:
        spec["schedulingGroup"] = {"podGroupName": name}
    metadata: Obj = {"labels": {**passthrough(owner.labels), **attempt_labels(job, attempt)}}
    if annotations := passthrough(owner.annotations):
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": spec}


def render_pod_group(job: Job, owner: Owner, attempt: int) -> Obj:
    """The attempt's gang: the scheduler binds none of its pods until all `nodes` of them fit."""
    return {
        "apiVersion": POD_GROUP_API_VERSION,
        "kind": "PodGroup",
        "metadata": _metadata(job, owner, attempt),
        "spec": {"schedulingPolicy": {"gang": {"minCount": job.spec.resources.nodes}}},
    }


def render_job(job: Job, owner: Owner, attempt: int, settings: RenderSettings) -> Obj:
    nodes = job.spec.resources.nodes
    body: Obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job, owner, attempt),
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            "backoffLimit": 0,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": list(PERMANENT_EXIT_CODES),
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            "template": render_pod_template(job, owner, attempt, settings),
        },
    }
    if KUEUE_QUEUE_LABEL in owner.labels:
        # Kueue admits a batch Job by unsuspending it; created suspended, no pod exists before that.
        body["spec"]["suspend"] = True
    return body


def render_attempt(
    job: Job, owner: Owner, attempt: int, inputs: dict[str, ResolvedInput], settings: RenderSettings
) -> list[Obj]:
    """Every object of one attempt, in the order to apply them (the Job last: its pods need the rest)."""
    objs = [render_config_map(job, owner, attempt, inputs, settings), render_service(job, owner, attempt, settings)]
    if settings.gang_scheduling:
        objs.append(render_pod_group(job, owner, attempt))
    objs.append(render_job(job, owner, attempt, settings))
    return objs
