"""The chart against the real control plane: `helm install` is accepted object by object; the
operator, run with the chart's ServiceAccount token (RBAC enforced by the API server), takes jobs
through their whole lifecycle and is refused what the chart does not grant; a real Prometheus,
configured the way the chart's ServiceMonitor and PodMonitor say, scrapes the operator and a
rank-0 trainer running on the process node.

The operator runs on this machine, not in the chart's pod: the process node does not project
ServiceAccount tokens, so the test hands the operator a token of the chart's ServiceAccount
(`kubectl create token`), which is exactly what the pod would get.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart.helmkit import CHART, FULL_VALUES, alert_groups, one, render
from prometheus_client.parser import text_string_to_metric_families
from testbed import procs
from testbed.kube import EXIT_CODE_ANNOTATION, ON_PROCESS_NODE, OUTCOME_LABEL, new_namespace, wait_for
from testbed.operator import OperatorProcess, pretrain_manifest

from forgeline.api.kinds import KINDS

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

RELEASE = "forgeline"
NAMESPACE = "forgeline-system"
GROUP, VERSION = "forgeline.io", "v1alpha1"
Obj = dict[str, Any]

# Stand-ins for the Prometheus Operator's CRDs, so the API server serves monitoring.coreos.com/v1
# (Helm's .Capabilities sees it and renders the monitors) and stores what the chart sends.
MONITORING_KINDS = {
    "ServiceMonitor": "servicemonitors",
    "PodMonitor": "podmonitors",
    "PrometheusRule": "prometheusrules",
}


def monitoring_crd(kind: str, plural: str) -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                        }
                    },
                }
            ],
        },
    }


@dataclass
class Install:
    objects: list[Obj]
    notes: str
    trainer_port: int
    store: Path


def helm(cluster: Any, *args: str) -> str:
    import subprocess

    res = subprocess.run(
        [str(cluster.bin_dir / "helm"), *args], env=cluster.env(), capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, f"helm {' '.join(args)}: {res.stderr}{res.stdout}"
    return res.stdout


def adopt_existing_crds(cluster: Any) -> None:
    """CRDs applied with `kubectl apply -f crds/` (by other tests, or by hand before Helm): mark them
    as this release's so `helm install` takes them over (docs/helm.md, Upgrading)."""
    found = json.loads(cluster.kubectl("get", "crd", "-o", "json").stdout)["items"]
    for crd in found:
        if crd["spec"]["group"] != GROUP:
            continue
        name = crd["metadata"]["name"]
        cluster.kubectl("label", "--overwrite", f"crd/{name}", "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl(
            "annotate", "--overwrite", f"crd/{name}",
            f"meta.helm.sh/release-name={RELEASE}", f"meta.helm.sh/release-namespace={NAMESPACE}",
        )  # fmt: skip


RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}


def restricted_namespace(cluster: Any, name: str) -> None:
    """A namespace (made if missing) where Pod Security admission enforces "restricted"."""
    if cluster.kubectl("get", "namespace", name, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "--overwrite", "namespace", name, *[f"{k}={v}" for k, v in RESTRICTED.items()])


@pytest.fixture(scope="module")
def installed(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    workdir = tmp_path_factory.mktemp("chart")
    crds = "\n---\n".join(yaml.safe_dump(monitoring_crd(k, p)) for k, p in MONITORING_KINDS.items())
    cluster.kubectl("apply", "-f", "-", input=crds)
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        *[f"crd/{p}.monitoring.coreos.com" for p in MONITORING_KINDS.values()],
    )  # fmt: skip
    adopt_existing_crds(cluster)
    restricted_namespace(cluster, NAMESPACE)
    store = workdir / "store"
    trainer_port = procs.free_port()
    notes = helm(
        cluster, "install", RELEASE, str(CHART), "--namespace", NAMESPACE,
        "--set", f"operator.store=file://{store}", "--set", f"operator.trainerMetricsPort={trainer_port}",
    )  # fmt: skip
    manifest = helm(cluster, "get", "manifest", RELEASE, "--namespace", NAMESPACE)
    objects = [o for o in yaml.safe_load_all(manifest) if o]
    try:
        yield Install(objects, notes, trainer_port, store)
    finally:
        helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout=60s")
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        cluster.kubectl(
            "delete", "crd", *[f"{p}.monitoring.coreos.com" for p in MONITORING_KINDS.values()], check=False
        )


def test_helm_install_is_accepted_object_by_object(cluster: Any, installed: Install, tmp_path: Path) -> None:
    kinds = {o["kind"] for o in installed.objects}
    assert kinds >= {
        "CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service",
        "ConfigMap", "ServiceMonitor", "PodMonitor", "PrometheusRule",
    }, "the cluster serves monitoring.coreos.com/v1, so the monitors are rendered"  # fmt: skip
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump_all(installed.objects))
    live = json.loads(cluster.kubectl("get", "-f", str(path), "-o", "json").stdout)["items"]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in live) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in installed.objects
    )
    for crd in (o for o in live if o["kind"] == "CustomResourceDefinition"):
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True" and conditions.get("NonStructuralSchema") != "True"
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The ReplicaSet made the operator's pod in a namespace that enforces "restricted".
    pods = wait_for(
        lambda: json.loads(
            cluster.kubectl(
                "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/instance=forgeline", "-o", "json"
            ).stdout
        )["items"],
        timeout=60,
        what="the operator's pod (admitted under Pod Security restricted)",
    )
    assert pods[0]["spec"]["serviceAccountName"] == "forgeline"
    refused = cluster.kubectl(
        "run", "not-restricted", "--image=busybox", "--privileged", "--dry-run=server", "-n", NAMESPACE, check=False
    )
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, "the namespace does enforce"
    assert "rollout status deployment/forgeline" in installed.notes
    assert "ServiceMonitor, PodMonitor" in installed.notes and "are installed" in installed.notes


def test_helm_upgrade_changes_an_alert_threshold_in_place(cluster: Any, installed: Install) -> None:
    helm(
        cluster, "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values",
        "--set", "monitoring.prometheusRule.alerts.noProgressMinutes=20",
    )  # fmt: skip
    rule = json.loads(cluster.kubectl("get", "prometheusrule", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "ForgelineJobNoProgress"]
    assert exprs and exprs[0].endswith("> 1200")
    crds = json.loads(cluster.kubectl("get", "crd", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json").stdout)
    assert len(crds["items"]) == len(KINDS)


def test_full_values_pass_server_side_validation(cluster: Any, installed: Install, tmp_path: Path) -> None:
    """Every object of the fully-configured chart (namespaced RBAC, monitors, dashboard elsewhere)
    through the API server's validation and admission, without persisting anything."""
    namespaces = ("team-a", "team-b", "monitoring")
    for namespace in namespaces:
        restricted_namespace(cluster, namespace)
    objects = render(values=[FULL_VALUES], api_versions=["monitoring.coreos.com/v1"], namespace=NAMESPACE)
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    try:
        res = cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=chart-test", "--dry-run=server",
            "-f", str(path),
        )  # fmt: skip
    finally:
        cluster.kubectl("delete", "namespace", *namespaces, "--wait=false", check=False)
    assert len(re.findall(r"serverside-applied \(server dry run\)", res.stdout)) == len(objects), res.stdout
    assert "would violate PodSecurity" not in res.stderr, res.stderr


# -- the operator with the chart's ServiceAccount ---------------------------------------------------
@dataclass
class ChartOperator:
    process: OperatorProcess
    token: str

    @property
    def metrics_port(self) -> int:
        return self.process.metrics_port

    def log(self) -> str:
        return self.process.logs()


def service_account_client(cluster: Any, token: str) -> Any:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = cluster.server
    cfg.ssl_ca_cert = str(cluster.pki.ca_cert)
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(cfg)


@pytest.fixture(scope="module")
def chart_operator(
    cluster: Any, installed: Install, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartOperator]:
    workdir = tmp_path_factory.mktemp("chart-operator")
    deployment = one(installed.objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    token = cluster.kubectl(
        "create", "token", pod["serviceAccountName"], "--namespace", NAMESPACE, "--duration=2h"
    ).stdout.strip()
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": cluster.server, "certificate-authority": str(cluster.pki.ca_cert)},
                    }
                ],
                "users": [{"name": "chart-sa", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "chart-sa"}}],
                "current-context": "c",
            }
        )
    )
    kubeconfig.chmod(0o600)
    # The Deployment's own arguments; only the listen addresses change (all pods share this host).
    args = [a for a in container["args"] if not a.startswith(("--liveness=", "--metrics-port="))]
    assert container["command"] == ["forgeline", "operator"]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    process = OperatorProcess([*args, "--resync-seconds=2"], env, workdir, name="forgeline-operator-chart-sa")
    try:
        process.start()
        yield ChartOperator(process, token)
    finally:
        process.stop()


def can_i(api: Any, verb: str, resource: str, group: str = "", namespace: str | None = None) -> bool:
    from kubernetes import client

    authz: Any = client.AuthorizationV1Api(api)  # the client takes plain dicts at runtime
    review = authz.create_self_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {"verb": verb, "resource": resource, "group": group, "namespace": namespace}
            },
        }
    )
    return bool(review.status.allowed)


def test_chart_service_account_is_refused_what_the_chart_does_not_grant(
    cluster: Any, chart_operator: ChartOperator
) -> None:
    from kubernetes import client

    api = service_account_client(cluster, chart_operator.token)
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(api).list_secret_for_all_namespaces()
    assert denied.value.status == 403
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(api).list_namespaced_secret("default")
    assert denied.value.status == 403
    refused = [
        ("get", "secrets", "", "default"),
        ("create", "pods", "", "default"),
        ("delete", "pods", "", "default"),
        ("create", "deployments", "apps", "default"),
        ("create", "rolebindings", "rbac.authorization.k8s.io", "default"),
        ("delete", "customresourcedefinitions", "apiextensions.k8s.io", None),
        ("list", "nodes", "", None),
    ]
    assert [r for r in refused if can_i(api, *r)] == []
    granted = [
        ("create", "jobs", "batch", "default"),
        ("watch", "pods", "", "default"),
        ("patch", "pretrainjobs/status", GROUP, "default"),
        ("delete", "lorajobs", GROUP, "default"),
        ("create", "events", "", "default"),
    ]
    assert [g for g in granted if not can_i(api, *g)] == []


def test_chart_service_account_holds_the_lease_in_its_own_namespace_only(
    cluster: Any, installed: Install, chart_operator: ChartOperator
) -> None:
    """The chart's flags and its lease Role, through the API server's RBAC: the operator takes the
    Lease the Deployment names, in the release namespace, and may touch no lease elsewhere."""
    from kubernetes import client

    args = one(installed.objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    lease_name = next(a.split("=", 1)[1] for a in args if a.startswith("--leader-election-id="))
    leases: Any = client.CoordinationV1Api(cluster.client)
    lease = wait_for(
        lambda: leases.read_namespaced_lease(lease_name, NAMESPACE).spec.holder_identity,
        timeout=30,
        what=f"the chart operator to hold lease {NAMESPACE}/{lease_name}",
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{chart_operator.metrics_port}/leader", timeout=5) as r:
        assert r.status == 200, "the only replica leads"
    assert lease.startswith(os.uname().nodename)
    api = service_account_client(cluster, chart_operator.token)
    refused = [
        ("get", "leases", "coordination.k8s.io", "default"),
        ("create", "leases", "coordination.k8s.io", "default"),
        ("update", "leases", "coordination.k8s.io", "kube-system"),
        ("delete", "leases", "coordination.k8s.io", NAMESPACE),
        ("list", "leases", "coordination.k8s.io", NAMESPACE),
    ]
    assert [r for r in refused if can_i(api, *r)] == []
    with pytest.raises(client.ApiException) as denied:
        client.CoordinationV1Api(api).read_namespaced_lease("some-other-lease", NAMESPACE)
    assert denied.value.status == 403, "get is limited to the chart's lease by resourceNames"


@pytest.fixture
def namespace(cluster: Any) -> Iterator[str]:
    from kubernetes import client

    core: Any = client.CoreV1Api(cluster.client)
    ns = new_namespace(core, "chart")
    core.patch_namespace(ns, {"metadata": {"labels": RESTRICTED}})  # trainer pods must pass too
    yield ns
    core.delete_namespace(ns)

    def gone() -> bool:
        try:
            core.read_namespace(ns)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    # Wait: the kwok GPU nodes are shared with the rest of the session, and a gang still holding
    # GPUs would make the next test's 4x8-GPU job unschedulable.
    wait_for(gone, timeout=120, what=f"namespace {ns} and its pods to be deleted")


def test_chart_service_account_is_enough_for_a_whole_job_lifecycle(
    cluster: Any, chart_operator: ChartOperator, namespace: str
) -> None:
    from kubernetes import client

    custom: Any = client.CustomObjectsApi(cluster.client)
    core: Any = client.CoreV1Api(cluster.client)

    def status(plural: str, name: str) -> Obj:
        try:
            return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name).get("status") or {}
        except client.ApiException as exc:
            return {"gone": True} if exc.status == 404 else {}

    def wait_state(plural: str, name: str, check: Any, what: str, timeout: float = 90) -> Obj:
        try:
            return wait_for(lambda: (s := status(plural, name)) and check(s) and s, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nstatus: {status(plural, name)}\noperator log:\n{chart_operator.log()[-4000:]}"
            ) from None

    # A stage that succeeds, a downstream that names it (a hand-off) and deletes itself after its
    # TTL, and a gang that loses a pod, restarts as a whole and then succeeds.
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "pretrainjobs", pretrain_manifest("base", outcome=None)
    )
    lora = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoRAJob",
        "metadata": {"name": "tuned"},
        "spec": {
            "model": {"fromJob": {"kind": "PretrainJob", "name": "base"}},
            "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]},
            "data": {"synthetic": {"examples": 100}},
            "training": {"maxSteps": 5},
            "resources": {"nodes": 1, "gpusPerNode": 1},
            "runPolicy": {"ttlSecondsAfterFinished": 1},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "lorajobs", lora)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "pretrainjobs", pretrain_manifest("flaky", outcome="hang", nodes=2)
    )

    base = wait_state("pretrainjobs", "base", lambda s: s.get("state") == "Succeeded", "base Succeeded")
    assert base["output"]["uri"]
    wait_state("pretrainjobs", "flaky", lambda s: s.get("state") == "Running", "flaky Running")
    pods = core.list_namespaced_pod(namespace, label_selector="forgeline.io/job=flaky,forgeline.io/attempt=1").items
    assert len(pods) == 2
    victim = pods[0].metadata.name
    core.patch_namespaced_pod(victim, namespace, {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "137"}}})
    core.patch_namespaced_pod(victim, namespace, {"metadata": {"labels": {OUTCOME_LABEL: "fail"}}})
    flaky = wait_state(
        "pretrainjobs", "flaky", lambda s: s.get("attempt") == 2 and s.get("state") == "Running", "flaky attempt 2"
    )
    assert flaky["restarts"] == 1
    # The new gang finishes (kwok completes pods with any other outcome label), so no pod is left
    # holding the GPUs that later tests of the session need.
    for pod in core.list_namespaced_pod(
        namespace, label_selector="forgeline.io/job=flaky,forgeline.io/attempt=2"
    ).items:
        core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"labels": {OUTCOME_LABEL: "complete"}}})
    flaky = wait_state("pretrainjobs", "flaky", lambda s: s.get("state") == "Succeeded", "flaky Succeeded")
    assert flaky["attempt"] == 2 and flaky["restarts"] == 1
    # The LoRAJob ran on base's output, succeeded and then deleted itself (its TTL).
    wait_state("lorajobs", "tuned", lambda s: s.get("gone"), "tuned Succeeded and deleted by its TTL")
    events = core.list_namespaced_event(namespace).items
    assert any(
        e.source.component == "forgeline-operator" or e.reporting_component == "forgeline-operator" for e in events
    )
    # The series the alerts and the dashboard are built on have values after this lifecycle.
    with urllib.request.urlopen(f"http://127.0.0.1:{chart_operator.metrics_port}/metrics", timeout=5) as r:
        exposition = r.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())

    assert value("forgeline_operator_stage_handoff_seconds_count", kind="LoRAJob") >= 1
    assert value("forgeline_operator_restarts_total", kind="PretrainJob") >= 1
    assert value("forgeline_operator_gang_startup_seconds_count", kind="PretrainJob") >= 1
    assert value("forgeline_operator_reconcile_total", kind="PretrainJob", result="success") >= 1
    assert value("forgeline_operator_jobs", kind="PretrainJob", state="Succeeded") >= 2
    # Counted once each, on the transition (ForgelineJobFailed takes increase() of the Failed one).
    assert value("forgeline_jobs_finished_total", kind="PretrainJob", result="Succeeded") == 2
    assert value("forgeline_jobs_finished_total", kind="LoRAJob", result="Succeeded") == 1
    assert value("forgeline_jobs_finished_total", result="Failed") == 0
    forbidden = [line for line in chart_operator.log().splitlines() if re.search(r"[Ff]orbidden|: 403\b|\(403\)", line)]
    assert forbidden == [], "the operator was refused something it needs:\n" + "\n".join(forbidden[:20])


# -- Prometheus ---------------------------------------------------------------------------------------
def _meta(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def podmonitor_scrape_config(podmonitor: Obj, targets_file: Path) -> Obj:
    """What the Prometheus Operator generates for this PodMonitor (the parts the chart uses).

    Debian's Prometheus is built without Kubernetes service discovery, so the candidates come from
    a file (pod_targets below writes it as kubernetes_sd's role "pod" would); selecting among them
    is left to the PodMonitor's own selector and relabelings, as in a real cluster."""
    spec = podmonitor["spec"]
    endpoint = spec["podMetricsEndpoints"][0]
    relabel: list[Obj] = []
    for expr in spec["selector"]["matchExpressions"]:
        if expr["operator"] == "Exists":
            source, regex = f"__meta_kubernetes_pod_labelpresent_{_meta(expr['key'])}", "true"
        elif expr["operator"] == "In":
            source, regex = f"__meta_kubernetes_pod_label_{_meta(expr['key'])}", f"({'|'.join(expr['values'])})"
        else:
            raise AssertionError(f"translate {expr['operator']} too")
        relabel.append({"action": "keep", "source_labels": [source], "regex": regex})
    relabel += [
        {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": endpoint["port"]},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {
            "target_label": "job",
            "replacement": f"{podmonitor['metadata']['namespace']}/{podmonitor['metadata']['name']}",
        },
    ]
    relabel += [{"source_labels": r["sourceLabels"], "target_label": r["targetLabel"]} for r in endpoint["relabelings"]]
    return {
        "job_name": f"podMonitor/{podmonitor['metadata']['namespace']}/{podmonitor['metadata']['name']}/0",
        "metrics_path": endpoint["path"],
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
        "relabel_configs": relabel,
    }


def pod_targets(core: Any, namespace: str, path: Path) -> None:
    """Every running pod's every container port, with kubernetes_sd's role "pod" meta labels."""
    groups = []
    for pod in core.list_namespaced_pod(namespace).items:
        if pod.status.phase != "Running" or not pod.status.pod_ip:
            continue
        labels = {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_pod_name": pod.metadata.name,
            **{f"__meta_kubernetes_pod_label_{_meta(k)}": v for k, v in (pod.metadata.labels or {}).items()},
            **{f"__meta_kubernetes_pod_labelpresent_{_meta(k)}": "true" for k in pod.metadata.labels or {}},
        }
        for container in pod.spec.containers:
            for port in container.ports or []:
                groups.append(
                    {
                        "targets": [f"{pod.status.pod_ip}:{port.container_port}"],
                        "labels": {
                            **labels,
                            "__meta_kubernetes_pod_container_name": container.name,
                            "__meta_kubernetes_pod_container_port_name": port.name or "",
                        },
                    }
                )
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(groups))
    partial.rename(path)  # Prometheus never reads half a file


def test_prometheus_scrapes_the_operator_and_a_rank_zero_trainer(
    cluster: Any, installed: Install, chart_operator: ChartOperator, prometheus: Any, namespace: str, tmp_path: Path
) -> None:
    from kubernetes import client

    core: Any = client.CoreV1Api(cluster.client)
    service = one(installed.objects, "Service")
    targets = tmp_path / "pods.json"
    pod_targets(core, namespace, targets)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(alert_groups(installed.objects)))
    prometheus.configure(
        [
            {  # as the ServiceMonitor would: job = the Service's name, namespace = the release's
                "job_name": "forgeline-operator",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{chart_operator.metrics_port}"],
                        "labels": {"job": service["metadata"]["name"], "namespace": NAMESPACE},
                    }
                ],
            },
            podmonitor_scrape_config(one(installed.objects, "PodMonitor"), targets),
        ],
        rule_files=[str(rules)],
    )
    body = pretrain_manifest("live", outcome=None)
    body["spec"]["resources"] = {"nodes": 2, "gpusPerNode": 0, "procsPerNode": 1, **ON_PROCESS_NODE}
    body["spec"]["data"] = {"synthetic": {"examples": 2000}}
    body["spec"]["training"] = {"maxSteps": 100000, "batchSize": 4}
    custom: Any = client.CustomObjectsApi(cluster.client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "pretrainjobs", body)

    def scraped(expr: str) -> list[Obj]:
        return prometheus.query(expr)

    def trainer_step() -> list[Obj]:
        pod_targets(core, namespace, targets)  # service discovery, as often as we look
        return scraped('forgeline_train_step{forgeline_job="live", kind="PretrainJob"} > 0')

    try:
        step = wait_for(
            trainer_step,
            timeout=180,
            what="rank 0's forgeline_train_step in Prometheus (through the PodMonitor's selection)",
        )
    except AssertionError as exc:
        seen = [(t["labels"], t["health"], t.get("lastError")) for t in prometheus.targets()]
        live = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "pretrainjobs", "live")
        logs = {
            p.metadata.name: cluster.process_node.read_log(namespace, p.metadata.name)[-2000:]
            for p in core.list_namespaced_pod(namespace).items
        }
        raise AssertionError(
            f"{exc}\ntargets: {seen}\nstatus: {live.get('status')}\ntrainer logs: {logs}\n"
            f"operator log:\n{chart_operator.log()[-3000:]}"
        ) from None
    labels = step[0]["metric"]
    # (An attempt may have been retried: on the process node every pod shares this machine's ports.)
    attempt = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "pretrainjobs", "live")["status"][
        "attempt"
    ]
    assert labels["attempt"] == str(attempt)
    assert labels["namespace"] == namespace and labels["stage"] == "pretrain"
    assert labels["pod"].startswith(f"live-pretrain-a{attempt}-0-"), "rank 0's pod"
    trainer_targets = [t for t in prometheus.targets() if t["labels"]["job"].endswith("/forgeline-trainers")]
    assert len(trainer_targets) == 1, "only rank 0 of the two-node gang is a target"
    assert wait_for(
        lambda: scraped('rate(forgeline_train_tokens_total{forgeline_job="live"}[5s]) > 0'), timeout=60, what="tokens/s"
    )
    assert wait_for(lambda: scraped('forgeline_train_loss{forgeline_job="live"}'), timeout=60, what="the loss")
    operator_job = service["metadata"]["name"]
    up = scraped(f'up{{job="{operator_job}", namespace="{NAMESPACE}"}}')
    assert [s["value"][1] for s in up] == ["1"]
    running = wait_for(
        lambda: scraped('forgeline_operator_jobs{kind="PretrainJob", state="Running"} >= 1'),
        timeout=60,
        what="the operator's jobs gauge",
    )
    assert running[0]["metric"]["job"] == operator_job
    assert scraped('sum(forgeline_operator_reconcile_total{kind="PretrainJob"}) > 0')
    # The chart's rules load into a real Prometheus, and the operator-down alert sees this operator.
    groups = prometheus.api("rules")["groups"]
    assert {r["name"] for g in groups for r in g["rules"]} >= {"ForgelineOperatorDown", "ForgelineJobNoProgress"}
    down = next(r for g in groups for r in g["rules"] if r["name"] == "ForgelineOperatorDown")
    assert down["health"] == "ok" and down["alerts"] == []
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "pretrainjobs", "live")
