"""The process node runs pods' containers as local processes and reports them like a kubelet."""

from __future__ import annotations

import sys
import textwrap

import pytest
from testbed.kube import ON_PROCESS_NODE, wait_for

pytestmark = pytest.mark.cluster


def finished(core, ns: str, name: str):
    def check():
        status = core.read_namespaced_pod(name, ns).status
        return status if status.phase in ("Succeeded", "Failed") else None

    return wait_for(check, timeout=30, what=f"pod {ns}/{name} to finish")


def process_pod(name: str, command: list[str], **spec) -> dict:
    container = {"name": "main", "image": "trainer:test", "command": command, **spec.pop("container", {})}
    return {
        "metadata": {"name": name, "labels": spec.pop("labels", {})},
        "spec": {**ON_PROCESS_NODE, "restartPolicy": "Never", "containers": [container], **spec},
    }


def test_pod_runs_as_a_process_logs_and_succeeds(cluster, core, ns):
    core.create_namespaced_pod(ns, process_pod("hello", ["python", "-c", "print(1)"]))

    status = finished(core, ns, "hello")

    assert status.phase == "Succeeded"
    assert status.container_statuses[0].state.terminated.exit_code == 0
    assert cluster.process_node.read_log(ns, "hello").strip() == "1"
    assert cluster.kubectl("logs", "-n", ns, "hello").stdout.strip() == "1"  # served by the node's kubelet API


def test_env_volumes_and_termination_message_reach_the_process(cluster, core, ns):
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cfg"}, "data": {"stage.json": '{"lr": 1}', "mode": "fast"}}
    )
    core.create_namespaced_secret(ns, {"metadata": {"name": "creds"}, "stringData": {"key": "s3cr3t"}})
    script = textwrap.dedent("""
        import os, sys
        cfg = open(sys.argv[1]).read()
        msg = f"{os.environ['MODE']} {os.environ['SECRET']} {os.environ['POD_NAME']} {os.environ['POD_IP']} {cfg}"
        open(os.environ["TERM_LOG"], "w").write(msg)
        sys.exit(3)
    """)
    container = {
        "args": ["/etc/forgeline/stage.json"],
        "env": [
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "TERM_LOG", "value": "/dev/termination-log"},
        ],
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/forgeline"}],
    }
    pod = process_pod(
        "envs",
        [sys.executable, "-c", script],
        container=container,
        volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}],
    )
    core.create_namespaced_pod(ns, pod)

    status = finished(core, ns, "envs")

    terminated = status.container_statuses[0].state.terminated
    assert (status.phase, terminated.exit_code, terminated.reason) == ("Failed", 3, "Error")
    assert terminated.message == f'fast s3cr3t envs {status.pod_ip} {{"lr": 1}}'
    assert status.pod_ip.startswith("127.0.")


ECHO = textwrap.dedent("""
    import os, socket, sys, time
    me, peer = os.environ["POD_IP"], sys.argv[1]
    srv = socket.create_server((me, 7007))
    srv.settimeout(20)
    deadline = time.monotonic() + 20
    while True:  # the peer may not be listening yet
        try:
            conn = socket.create_connection((peer, 7007), timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    conn.sendall(os.environ["HOSTNAME"].encode())
    got, _ = srv.accept()
    print("heard", got.recv(100).decode(), flush=True)
""")


def test_pods_behind_headless_service_reach_each_other_by_dns_name(cluster, core, ns):
    core.create_namespaced_service(
        ns, {"metadata": {"name": "gang"}, "spec": {"clusterIP": "None", "selector": {"app": "gang"}}}
    )
    for me, peer in (("gang-0", "gang-1"), ("gang-1", "gang-0")):
        pod = process_pod(
            me,
            [sys.executable, "-c", ECHO, f"{peer}.gang"],
            hostname=me,
            subdomain="gang",
            labels={"app": "gang"},
            container={"env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]},
        )
        core.create_namespaced_pod(ns, pod)

    for me, peer in (("gang-0", "gang-1"), ("gang-1", "gang-0")):
        status = finished(core, ns, me)
        assert status.phase == "Succeeded", cluster.process_node.read_log(ns, me)
        assert cluster.process_node.read_log(ns, me).strip() == f"heard {peer}"


def test_deleting_a_running_pod_stops_its_process_with_sigterm(cluster, core, ns):
    script = textwrap.dedent("""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))
        print("up", flush=True)
        time.sleep(60)
    """)
    core.create_namespaced_pod(ns, process_pod("sleeper", [sys.executable, "-c", script]))
    wait_for(lambda: "up" in cluster.process_node.read_log(ns, "sleeper"), timeout=30, what="the process to start")

    core.delete_namespaced_pod("sleeper", ns, grace_period_seconds=30)

    def gone():
        return not [p for p in core.list_namespaced_pod(ns).items if p.metadata.name == "sleeper"]

    # Well inside the 30 s grace period: the process exited on SIGTERM, not on the SIGKILL after it.
    wait_for(gone, timeout=10, what="the pod to be removed after SIGTERM")
