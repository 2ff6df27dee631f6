"""The Helm chart, offline: lint, render with default and full values, the schema, the CRD copies,
least-privilege RBAC, restricted Pod Security, and that the monitors match what the operator and
the trainers really export. The cluster-side checks are in test_chart_cluster.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart.helmkit import (
    CHART,
    FULL_VALUES,
    MONITORING_API,
    REPO,
    alert_groups,
    find,
    helm,
    minimal_job_body,
    one,
    render,
    template_args,
)
from chart.make_dashboard import OUT as DASHBOARD
from chart.make_dashboard import render as render_dashboard
from chart.metric_names import exported_series, queried_metrics

from forgeline.api.crd import render_crds
from forgeline.api.kinds import GROUP, KINDS
from forgeline.operator.render import LABEL_JOB, LABEL_KIND, LABEL_RANK

Obj = dict[str, Any]
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def default() -> list[Obj]:
    return render()


@pytest.fixture(scope="module")
def full() -> list[Obj]:
    return render(values=[FULL_VALUES])


@pytest.fixture(scope="module")
def monitored() -> list[Obj]:
    """Default values on a cluster that serves the Prometheus Operator's API."""
    return render(api_versions=[MONITORING_API])


def operator_container(objects: list[Obj]) -> Obj:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def flags(container: Obj) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for arg in container["args"]:
        name, _, value = arg.partition("=")
        out.setdefault(name, []).append(value)
    return out


# -- lint and render -------------------------------------------------------------------------------
@pytest.mark.parametrize("values", [[], [FULL_VALUES]], ids=["default", "full"])
def test_chart_lints_strictly(values: list[Path]) -> None:
    args = ["lint", str(CHART), "--strict"]
    for path in values:
        args += ["--values", str(path)]
    res = helm(*args)
    assert "0 chart(s) failed" in res.stdout


def test_default_render_has_the_operator_and_no_monitors_without_the_api(default: list[Obj]) -> None:
    kinds = sorted({o["kind"] for o in default})
    assert kinds == [
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition", "Deployment",
        "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    ]  # fmt: skip
    assert not MONITORING_KINDS & set(kinds), "monitors need the monitoring.coreos.com API or monitoring.force"


def test_monitors_render_when_the_cluster_serves_the_monitoring_api(monitored: list[Obj]) -> None:
    assert {o["kind"] for o in monitored} >= MONITORING_KINDS


def test_monitoring_force_renders_monitors_without_the_api() -> None:
    objects = render(set_values={"monitoring.force": True})
    assert {o["kind"] for o in objects} >= MONITORING_KINDS
    assert not MONITORING_KINDS & {
        o["kind"] for o in render(set_values={"monitoring.enabled": False, "monitoring.force": True})
    }


def test_full_values_render_every_optional_part(full: list[Obj]) -> None:
    kinds = {o["kind"] for o in full}
    assert kinds >= {"Role", "RoleBinding", "ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
    container = operator_container(full)
    assert container["image"] == (
        "registry.example.com/forgeline/operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    got = flags(container)
    assert got["--namespace"] == ["team-a", "team-b"]
    assert got["--image"] == ["registry.example.com/forgeline/trainer:0.1.0-cuda12.8"]
    assert got["--store"] == ["s3://ml-artifacts/forgeline"]
    assert got["--storage-endpoint"] == ["http://seaweedfs.storage.svc:8333"]
    assert got["--storage-secret"] == ["forgeline-s3"]
    assert got["--trainer-metrics-port"] == ["9401"]
    assert sorted(got["--trainer-env"]) == ["NCCL_DEBUG=INFO", "NCCL_IB_HCA=mlx5", "NCCL_SOCKET_IFNAME=eth0"]
    assert got["--workers"] == ["8"]
    pod = one(full, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "forgeline-operator"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    dashboard = one(full, "ConfigMap", "forgeline-full-dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    for kind in MONITORING_KINDS:
        assert one(full, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = [r["alert"] for g in one(full, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert "ForgelineHandoffSlow" not in alerts and "ForgelineOperatorDown" in alerts
    rules = [r for g in one(full, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert all(r["labels"]["team"] == "ml-platform" and r["labels"]["severity"] for r in rules)
    podmonitor = one(full, "PodMonitor")
    assert podmonitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_default_operator_flags_are_ones_the_operator_accepts(default: list[Obj]) -> None:
    from forgeline.cli.main import build_parser

    container = operator_container(default)
    assert container["command"] == ["forgeline", "operator"]
    args = build_parser().parse_args(["operator", *container["args"]])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.metrics_port == ports["metrics"]
    assert args.liveness == f"http://0.0.0.0:{ports['liveness']}/healthz"
    assert args.namespace is None, "no watchNamespaces: every namespace"
    assert args.image == "ghcr.io/forgeline/trainer:0.1.0"


def test_full_values_operator_flags_are_ones_the_operator_accepts(full: list[Obj]) -> None:
    """Storage defaults and trainer env reach the operator as flags it knows."""
    from forgeline.cli.main import build_parser

    argv = operator_container(full)["args"]
    assert any(a.startswith("--storage-endpoint=") for a in argv) and any(a.startswith("--trainer-env=") for a in argv)
    args = build_parser().parse_args(["operator", *argv])
    assert args.storage_endpoint == "http://seaweedfs.storage.svc:8333"


# -- values.schema.json ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("image.pullpolicy=Always", "additional properties 'pullpolicy' not allowed"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("watchNamespaces[0]=Team_A", "/watchNamespaces/0"),
        ("ports.metrics=70000", "/ports/metrics"),
        ("operator.logLevel=chatty", "/operator/logLevel"),
        ("operator.trainerEnv.PET_NNODES=2", "PET_NNODES"),
        ("monitoring.prometheusRule.alerts.reconcileErrorRatio=2", "reconcileErrorRatio"),
        ("monitoring.prometheusRule.disabled[0]=NoSuchAlert", "/monitoring/prometheusRule/disabled/0"),
        ("monitoring.serviceMonitor.interval=soon", "/monitoring/serviceMonitor/interval"),
        ("crds.instal=true", "additional properties 'instal' not allowed"),
        ("replicaCount=0", "/replicaCount"),
        ("podAntiAffinity=sometimes", "/podAntiAffinity"),
        ("leaderElection.retryPeriodSeconds=0", "/leaderElection/retryPeriodSeconds"),
    ],
)
def test_schema_rejects_a_bad_value_and_names_it(setting: str, complaint: str) -> None:
    res = helm(*template_args(), "--set", setting, check=False)
    assert res.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in res.stderr
    assert complaint in res.stderr


def test_every_value_in_values_yaml_is_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: Any, sch: Obj, path: str) -> None:
        if isinstance(node, dict) and sch.get("properties") is not None:
            for key, sub in node.items():
                assert key in sch["properties"], f"{path}.{key} is not in values.schema.json"
                walk(sub, sch["properties"][key], f"{path}.{key}")

    walk(values, schema, "")
    full = yaml.safe_load(FULL_VALUES.read_text())
    walk(full, schema, "")


# -- CRDs -------------------------------------------------------------------------------------------
def test_chart_crd_copies_are_byte_identical_to_the_generated_crds() -> None:
    generated = render_crds()
    copies = CHART / "files" / "crds"
    assert {p.name for p in copies.glob("*.yaml")} == set(generated), "run `forgeline crds`"
    for name, text in generated.items():
        assert (copies / name).read_text() == text, f"{copies / name} is stale; run `forgeline crds`"
        assert (REPO / "crds" / name).read_text() == text


def test_forgeline_crds_writes_and_checks_the_chart_copies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from forgeline.cli.main import main

    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text("name: x\n")
    args = ["crds", "--out", str(tmp_path / "crds"), "--chart-out", str(chart / "files" / "crds")]
    assert main(args) == 0
    assert main([*args, "--check"]) == 0
    copy = chart / "files" / "crds" / next(iter(render_crds()))
    copy.write_text(copy.read_text() + "# edited\n")
    assert main([*args, "--check"]) == 1
    assert f"{copy}: stale" in capsys.readouterr().err


def test_rendered_crds_equal_the_generated_ones_plus_labels_and_keep_policy(default: list[Obj]) -> None:
    rendered = {o["metadata"]["name"]: o for o in find(default, "CustomResourceDefinition")}
    assert set(rendered) == {f"{cls.plural}.{GROUP}" for cls in KINDS.values()}
    for text in render_crds().values():
        want = yaml.safe_load(text)
        got = rendered[want["metadata"]["name"]]
        meta = got["metadata"]
        assert meta.pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert meta.pop("labels")["app.kubernetes.io/managed-by"] == "Helm"
        assert got == want


def test_crds_can_be_left_out_or_left_without_the_keep_policy() -> None:
    assert not find(render(set_values={"crds.install": False}), "CustomResourceDefinition")
    unkept = find(render(set_values={"crds.keep": False}), "CustomResourceDefinition")
    assert unkept and all("annotations" not in c["metadata"] for c in unkept)


# -- RBAC -------------------------------------------------------------------------------------------
def rules_of(objects: list[Obj], kind: str) -> list[Obj]:
    return [rule for role in find(objects, kind) for rule in role["rules"]]


def grants(rules: list[Obj], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


@pytest.mark.parametrize("values", [[], [FULL_VALUES]], ids=["cluster-wide", "namespaced"])
def test_rbac_is_least_privilege(values: list[Path]) -> None:
    objects = render(values=values)
    rules = rules_of(objects, "ClusterRole") + rules_of(objects, "Role")
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert all("/" not in g for g in rule["apiGroups"]), f"API groups have no versions: {rule}"
        assert "secrets" not in rule["resources"], "the operator never reads Secrets"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        assert "nonResourceURLs" not in rule
    for resource in ("pods", "nodes", "namespaces", "serviceaccounts"):
        for verb in ("create", "update", "patch", "delete"):
            assert not grants(rules, "", resource, verb), f"{verb} {resource}"


def test_rbac_covers_every_resource_the_operator_client_touches(default: list[Obj]) -> None:
    from forgeline.operator import client

    rules = rules_of(default, "ClusterRole")
    groups = {
        "/api/v1": "",
        "/apis/batch/v1": "batch",
        "/apis/scheduling.k8s.io/v1alpha2": "scheduling.k8s.io",
        "/apis/kueue.x-k8s.io/v1beta2": "kueue.x-k8s.io",
    }
    for kind, (prefix, plural) in client._BUILTIN.items():
        group = groups[prefix]
        if kind == "Event":
            assert grants(rules, group, plural, "create")
        elif kind == "Pod":
            for verb in ("get", "list", "watch"):
                assert grants(rules, group, plural, verb), f"{verb} {plural}"
        elif kind == "Workload":  # Kueue's: read only
            assert grants(rules, group, plural, "get") and grants(rules, group, plural, "list")
            assert not any(grants(rules, group, plural, v) for v in ("create", "patch", "update", "delete", "watch"))
        else:  # children: read, server-side apply, delete on restart
            for verb in ("get", "list", "patch", "create", "delete"):
                assert grants(rules, group, plural, verb), f"{verb} {plural}"
    for cls in KINDS.values():
        for verb in ("get", "list", "watch", "patch", "delete"):  # delete: ttlSecondsAfterFinished
            assert grants(rules, GROUP, cls.plural, verb)
        assert grants(rules, GROUP, f"{cls.plural}/status", "patch")
        assert grants(rules, GROUP, f"{cls.plural}/finalizers", "update")
    assert grants(rules, "batch", "jobs", "watch"), "kopf watches the attempts' Jobs"


def test_kueue_workload_reads_can_be_turned_off() -> None:
    def reads_workloads(objects: list[Obj]) -> bool:
        return grants(rules_of(objects, "ClusterRole"), "kueue.x-k8s.io", "workloads", "list")

    assert reads_workloads(render())
    assert not reads_workloads(render(set_values={"rbac.kueueWorkloads": False}))


def test_namespaced_mode_uses_roles_and_keeps_only_crd_reads_cluster_wide(full: list[Obj]) -> None:
    roles = [r for r in find(full, "Role") if r["metadata"]["name"] == "forgeline-full"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = [b for b in find(full, "RoleBinding") if b["metadata"]["name"] == "forgeline-full"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    cluster_rules = rules_of(full, "ClusterRole")
    assert cluster_rules == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    for binding in find(full, "RoleBinding") + find(full, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "forgeline-operator", "namespace": "forgeline"}
        ]


# -- the Deployment ---------------------------------------------------------------------------------
@pytest.mark.parametrize("values", [[], [FULL_VALUES]], ids=["default", "full"])
def test_deployment_is_two_leader_elected_replicas_rolling_and_pod_security_restricted(values: list[Path]) -> None:
    deployment = one(render(values=values), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert "--leader-elect" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
        assert not sc.get("privileged")
        assert "hostPort" not in json.dumps(container["ports"])
        assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
        probe = container["livenessProbe"]["httpGet"]
        assert probe == {"path": "/healthz", "port": "liveness"}
        liveness = {p["name"]: p["containerPort"] for p in container["ports"]}["liveness"]
        assert flags(container)["--liveness"] == [f"http://0.0.0.0:{liveness}/healthz"]


def test_without_leader_election_the_operator_is_one_replica_recreated() -> None:
    objects = render(set_values={"leaderElection.enabled": False, "replicaCount": 1})
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "two unelected operators must never overlap"
    assert not any(a.startswith("--leader") for a in operator_container(objects)["args"])
    assert not find(objects, "PodDisruptionBudget"), "minAvailable 1 of 1 would block every drain"
    assert not find(objects, "Role")


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"leaderElection.enabled": False}, "replicaCount 2 needs leaderElection.enabled"),
        ({"leaderElection.renewDeadlineSeconds": 15}, "leaseDurationSeconds must be more than renewDeadlineSeconds"),
        ({"leaderElection.retryPeriodSeconds": 9}, "renewDeadlineSeconds must be more than 1.2 x retryPeriodSeconds"),
    ],
)
def test_chart_refuses_two_writers_and_lease_timings_out_of_order(settings: dict[str, Any], complaint: str) -> None:
    res = helm(*template_args(set_values=settings), check=False)
    assert res.returncode != 0 and complaint in res.stderr, res.stderr


@pytest.mark.parametrize("values", [[], [FULL_VALUES]], ids=["default", "full"])
def test_leader_election_flags_reach_the_operator_and_pass_its_checks(values: list[Path]) -> None:
    from forgeline.cli.main import build_parser
    from forgeline.operator.leader import LeaseSettings

    objects = render(values=values, namespace="forgeline")
    args = build_parser().parse_args(["operator", *operator_container(objects)["args"]])
    assert args.leader_elect is True
    assert args.leader_election_namespace == "forgeline", "the lease lives in the release namespace"
    (role,) = [r for r in find(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert [args.leader_election_id] == role["rules"][1]["resourceNames"], "RBAC names the lease the operator uses"
    assert (args.lease_duration, args.renew_deadline, args.retry_period) == (15, 10, 2)
    LeaseSettings(
        namespace=args.leader_election_namespace,
        name=args.leader_election_id,
        identity="pod",
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
    )


@pytest.mark.parametrize("values", [[], [FULL_VALUES]], ids=["default", "full"])
def test_lease_rbac_is_one_namespaced_role_for_the_one_lease(values: list[Path]) -> None:
    objects = render(values=values, namespace="forgeline")
    assert not grants(rules_of(objects, "ClusterRole"), "coordination.k8s.io", "leases", "get"), (
        "no cluster-wide leases"
    )
    lease_roles = [r for r in find(objects, "Role") if any("leases" in rule["resources"] for rule in r["rules"])]
    (role,) = lease_roles
    assert role["metadata"]["namespace"] == "forgeline"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [role["rules"][1]["resourceNames"][0]],
            "verbs": ["get", "update"],
        },
    ]
    (binding,) = [b for b in find(objects, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert binding["metadata"]["namespace"] == "forgeline"
    sa = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "forgeline"}]


def test_pod_disruption_budget_keeps_one_replica_of_the_operator(default: list[Obj]) -> None:
    pdb = one(default, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    labels = one(default, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not find(render(set_values={"podDisruptionBudget.enabled": False}), "PodDisruptionBudget")
    assert not find(render(set_values={"replicaCount": 1}), "PodDisruptionBudget")


def test_replicas_spread_over_nodes_softly_by_default_hard_on_request(default: list[Obj]) -> None:
    deployment = one(default, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (term,) = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    hard = one(render(set_values={"podAntiAffinity": "hard"}), "Deployment")["spec"]["template"]["spec"]
    (required,) = hard["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["topologyKey"] == "kubernetes.io/hostname"
    none = one(render(set_values={"podAntiAffinity": "none"}), "Deployment")["spec"]["template"]["spec"]
    assert "affinity" not in none
    full = one(render(values=[FULL_VALUES]), "Deployment")["spec"]["template"]["spec"]
    assert list(full["affinity"]) == ["nodeAffinity"], "an explicit affinity replaces the preset"


def test_readiness_probe_asks_the_operator_for_readyz_on_its_metrics_port(default: list[Obj]) -> None:
    import urllib.error
    import urllib.request

    from prometheus_client import CollectorRegistry

    from forgeline.operator.metrics import OperatorMetrics

    container = operator_container(default)
    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/readyz", "port": "metrics"}
    metrics = OperatorMetrics(CollectorRegistry())
    states = {"ready": True, "leading": False}
    server = metrics.serve(0, "127.0.0.1", ready=lambda: states["ready"], leading=lambda: states["leading"])
    base = f"http://127.0.0.1:{server.server_port}"
    try:

        def status(path: str) -> int:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert (status("/readyz"), status("/leader")) == (200, 503), "a following standby is ready, not leading"
        states.update(ready=False)
        assert status("/readyz") == 503
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert "forgeline_operator_leader" in r.read().decode()
    finally:
        server.shutdown()


def test_the_metrics_service_selects_the_operator_pod_and_port(monitored: list[Obj]) -> None:
    service = one(monitored, "Service")
    pod_labels = one(monitored, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = one(monitored, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_podmonitor_scrapes_rank_zero_by_the_labels_and_port_the_operator_renders(monitored: list[Obj]) -> None:
    from forgeline.operator.render import CONTAINER

    spec = one(monitored, "PodMonitor")["spec"]
    assert {e["key"]: e for e in spec["selector"]["matchExpressions"]} == {
        LABEL_JOB: {"key": LABEL_JOB, "operator": "Exists"},
        LABEL_RANK: {"key": LABEL_RANK, "operator": "In", "values": ["0"]},
    }
    endpoint = spec["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics"
    sources = {r["targetLabel"]: r["sourceLabels"][0] for r in endpoint["relabelings"]}
    sanitize = lambda label: "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)  # noqa: E731
    assert sources["forgeline_job"] == sanitize(LABEL_JOB) and sources["kind"] == sanitize(LABEL_KIND)
    assert CONTAINER == "trainer"
    assert spec["namespaceSelector"] == {"any": True}


def test_trainer_pods_expose_the_port_the_podmonitor_scrapes() -> None:
    from forgeline.api.validate import parse_job
    from forgeline.operator.render import Owner, RenderSettings, render_pod_template

    job = parse_job(minimal_job_body())
    template = render_pod_template(job, Owner(uid="u"), 1, RenderSettings(metrics_port=9400))
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == 9400
    assert template["metadata"]["labels"][LABEL_JOB] == "base"


# -- monitoring content -----------------------------------------------------------------------------
def test_every_metric_in_alerts_and_dashboard_is_exported(monitored: list[Obj]) -> None:
    exported = exported_series()
    rules = alert_groups(monitored)
    queried = queried_metrics(r["expr"] for g in rules["groups"] for r in g["rules"])
    dashboard = json.loads(DASHBOARD.read_text())
    queried |= queried_metrics(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    assert queried - {"up"} <= exported, f"not exported by the operator or the trainers: {queried - exported}"


def test_dashboard_file_is_current_and_shipped_in_a_configmap(default: list[Obj]) -> None:
    assert DASHBOARD.read_text() == render_dashboard(), "run tests/chart/make_dashboard.py"
    configmap = one(default, "ConfigMap", "forgeline-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["forgeline.json"]) == json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    assert {
        "Jobs by state",
        "Progress",
        "Tokens/s",
        "Loss",
        "Gang restarts (1h)",
        "Hand-off latency p50 / p90",
    } <= titles


def test_alerts_cover_the_failure_modes_an_operator_must_hear_about(monitored: list[Obj]) -> None:
    alerts = {r["alert"]: r for g in alert_groups(monitored)["groups"] for r in g["rules"]}
    assert set(alerts) >= {
        "ForgelineJobStuckPending", "ForgelineJobNoProgress", "ForgelineRestartsRising", "ForgelineJobFailed",
        "ForgelineHandoffSlow", "ForgelineOperatorDown", "ForgelineReconcileErrors",
    }  # fmt: skip
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert 'job="forgeline-metrics", namespace="forgeline"' in alerts["ForgelineOperatorDown"]["expr"]
