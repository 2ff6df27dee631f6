"""The process node: a node agent that runs the containers of its pods as local processes.

It registers a Node (``process-0``; not annotated for kwok, so kwok leaves it alone), keeps its
Lease fresh, watches the pods bound to it and, for each pod:

* gives it a loopback address 127.0.0.N as ``status.podIP`` (processes should bind to it;
  all pods share this machine's ports). torchrun's store binds every interface, so where a
  real node's network namespace would keep two gangs' ``PET_MASTER_PORT=29500`` apart, this
  node gives each gang (pods of one ``<namespace>/<subdomain>``) a free port of its own;
* materialises its volumes and maps container paths to them (podspec.py explains how);
* runs init containers in order, then every container, as ``command + args`` in a process group
  of its own, output appended to ``<pod dir>/logs/<container>.log``;
* reports Pending -> Running -> Succeeded/Failed with containerStatuses (exit code, reason, the
  termination message read from the rewritten terminationMessagePath), restarting containers
  as restartPolicy says;
* on deletion sends SIGTERM, waits the grace period, sends SIGKILL, reports the final state and
  removes the pod (grace 0), as a kubelet does;
* makes ``<hostname>.<subdomain>`` (and the longer ``.<ns>.svc.cluster.local`` forms) resolve to
  the pod's address while a headless Service named ``<subdomain>`` selects it (hostsfile.py).

By default the node is tainted ``testbed.forgeline.io/process-node=true:NoSchedule`` so nothing
lands on it by accident: a pod opts in with a toleration and
``nodeSelector: {testbed.forgeline.io/process-node: "true"}``.

One worker thread owns all pod state; watch threads and process waiters only queue events.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from testbed import procs
from testbed.hostsfile import HostsBlock
from testbed.kubeletapi import KubeletLogServer
from testbed.podspec import (
    Obj,
    PodSpecError,
    decode_secret,
    default_base_env,
    materialise_volumes,
    prepare_container,
)
from testbed.podstatus import ContainerRun, PodRun, now, pod_status

log = logging.getLogger("testbed.processnode")
PROCESS_NODE_LABEL = "testbed.forgeline.io/process-node"
MERGE = "application/merge-patch+json"


class ProcessNode:
    def __init__(
        self,
        api_client_factory: Callable[[], Any],
        workdir: Path,
        *,
        name: str = "process-0",
        cpu: str = "16",
        memory: str = "64Gi",
        gpus: int = 0,
        taint: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.workdir = name, workdir
        self.cpu, self.memory, self.gpus, self.taint = cpu, memory, gpus, taint
        self.extra_env = dict(extra_env or {})
        self._gang_ports: dict[tuple[str, str], str] = {}
        self._client_factory = api_client_factory
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._stop = threading.Event()
        self._runs: dict[str, PodRun] = {}  # by pod uid
        self._services: dict[tuple[str, str], Obj] = {}
        self._free_ips = [f"127.0.{n // 250}.{n % 250 + 2}" for n in range(5000)]
        self._hosts = HostsBlock(f"node={name} dir={workdir}")
        self._threads: list[threading.Thread] = []
        self._worker_error: BaseException | None = None

    # -- public --------------------------------------------------------------------------------
    def start(self) -> None:
        from kubernetes import client

        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._hosts.writable():
            self._hosts.clear()  # also drops blocks that agents killed without clean-up left behind
        # Typed Any: the client takes plain dicts (JSON as the API server speaks it) at runtime.
        self._core: Any = client.CoreV1Api(self._client_factory())
        self._kubelet = KubeletLogServer(self.workdir / "kubelet", self.name, self._log_lookup)
        self._kubelet.start()
        self._register()
        for target in (self._watch_pods, self._watch_services, self._renew_lease):
            t = threading.Thread(target=target, name=f"{self.name}-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        worker = threading.Thread(target=self._work, name=f"{self.name}-worker", daemon=True)
        worker.start()
        self._threads.append(worker)

    def stop(self) -> None:
        """Stop every pod process (SIGTERM, then SIGKILL after 5 s) and drop the DNS entries."""
        self._stop.set()
        self._events.put(("shutdown",))
        for t in self._threads:
            if t.name.endswith("worker"):
                t.join(timeout=30)
        self._kubelet.stop()
        self._hosts.clear()

    def pod_dir(self, namespace: str, name: str) -> Path:
        """The directory of the latest pod with this name (logs/, volumes/, root/, termination/)."""
        dirs = sorted((self.workdir / "pods" / namespace).glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
        if not dirs:
            raise FileNotFoundError(f"no pod {namespace}/{name} ran on {self.name} (looked in {self.workdir}/pods)")
        return dirs[-1]

    def log_path(self, namespace: str, name: str, container: str | None = None) -> Path:
        logs = self.pod_dir(namespace, name) / "logs"
        if container is None:
            found = sorted(logs.glob("*.log"))
            if not found:
                raise FileNotFoundError(f"pod {namespace}/{name} has no container log yet in {logs}")
            return found[0]
        return logs / f"{container}.log"

    def read_log(self, namespace: str, name: str, container: str | None = None) -> str:
        return self.log_path(namespace, name, container).read_text(errors="replace")

    def _log_lookup(self, namespace: str, name: str, container: str) -> tuple[Path, Callable[[], bool]]:
        """For kubectl logs (kubeletapi.py): the container's log file and whether it still runs."""
        path = self.log_path(namespace, name, container)
        runs = [r for r in list(self._runs.values()) if r.key == f"{namespace}/{name}"]
        procs_ = [c.proc for r in runs for c in r.init + r.main if c.spec["name"] == container and c.proc]
        return path, lambda: any(p.alive() for p in procs_)

    # -- registration --------------------------------------------------------------------------
    def _register(self) -> None:
        from kubernetes.client.exceptions import ApiException

        resources = {"cpu": self.cpu, "memory": self.memory, "pods": "110", "nvidia.com/gpu": str(self.gpus)}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    PROCESS_NODE_LABEL: "true",
                },
            },
            "spec": {
                "taints": [{"key": PROCESS_NODE_LABEL, "value": "true", "effect": "NoSchedule"}] if self.taint else []
            },
        }
        with contextlib.suppress(ApiException):
            self._core.create_node(node)
        stamp = now()
        conditions = [
            {
                "type": t,
                "status": "False",
                "reason": f"KubeletHasNo{t}",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
            for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
        ]
        conditions.append(
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "process node agent",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
        )
        status = {
            "capacity": resources,
            "allocatable": resources,
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self._kubelet.port}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "",
                "containerRuntimeVersion": "forgeline-processnode://1",
                "kernelVersion": "",
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.34.4-processnode",
                "machineID": "",
                "operatingSystem": "linux",
                "osImage": "local processes",
                "systemUUID": "",
            },
        }
        self._core.patch_node_status(self.name, {"status": status}, _content_type=MERGE)

    def _renew_lease(self) -> None:  # the node lifecycle controller's heartbeat
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api: Any = client.CoordinationV1Api(self._client_factory())
        ns = "kube-node-lease"
        while not self._stop.is_set():
            renew = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            body = {
                "metadata": {"name": self.name},
                "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": renew},
            }
            try:
                try:
                    api.patch_namespaced_lease(self.name, ns, body, _content_type=MERGE)
                except ApiException as e:
                    if e.status != 404:
                        raise
                    api.create_namespaced_lease(ns, body)
            except Exception as e:
                if not self._stop.is_set():
                    log.warning("lease renewal failed: %s", e)
            self._stop.wait(10)

    # -- watches -------------------------------------------------------------------------------
    def _watch(self, kind: str, list_fn_name: str, **selectors: str) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        api: Any = client.CoreV1Api(self._client_factory())
        list_fn = getattr(api, list_fn_name)
        while not self._stop.is_set():
            try:
                listing = api.api_client.sanitize_for_serialization(list_fn(**selectors))
                for item in listing["items"]:
                    self._events.put((kind, "SYNC", item))
                rv = listing["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    for ev in watch.Watch().stream(list_fn, resource_version=rv, timeout_seconds=5, **selectors):
                        obj = ev["raw_object"]
                        if ev["type"] == "ERROR":
                            raise ApiException(status=obj.get("code", 500), reason=obj.get("message"))
                        rv = obj["metadata"]["resourceVersion"]
                        if ev["type"] != "BOOKMARK":
                            self._events.put((kind, ev["type"], obj))
            except Exception as e:
                if self._stop.is_set():
                    return
                log.debug("%s watch restarts after %s", kind, e)
                self._stop.wait(0.5)

    def _watch_pods(self) -> None:
        self._watch("pod", "list_pod_for_all_namespaces", field_selector=f"spec.nodeName={self.name}")

    def _watch_services(self) -> None:
        self._watch("svc", "list_service_for_all_namespaces")

    # -- the worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        # Pod processes are spawned here, so they die with this thread (procs.py, PDEATHSIG):
        # the shutdown event stops them gracefully first.
        try:
            while True:
                try:
                    event = self._events.get(timeout=0.2)
                except queue.Empty:
                    event = None
                if event == ("shutdown",):
                    break
                try:
                    if event is not None:
                        self._handle(event)
                    self._timers()
                except Exception:  # one bad pod must not stop the node
                    log.exception("process node: handling %s failed", event[:2] if event else "timers")
        except BaseException as e:  # pragma: no cover - surfaced in logs and by stop()
            self._worker_error = e
            log.exception("process node worker died")
        live = [c.proc for run in self._runs.values() for c in run.live()]
        for proc in live:
            proc.signal_group(15)
        for proc in live:
            proc.stop(grace=5)

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "pod":
            self._on_pod(event[1], event[2])
        elif kind == "svc":
            ns, name = event[2]["metadata"]["namespace"], event[2]["metadata"]["name"]
            if event[1] == "DELETED":
                self._services.pop((ns, name), None)
            else:
                self._services[(ns, name)] = event[2]
            self._sync_hosts()
        elif kind == "exit":
            run = self._runs.get(event[1])
            if run is not None:
                self._on_exit(run, event[2])
        elif kind == "post":
            run = self._runs.get(event[1])
            if run is not None:
                self._post(run)

    def _timers(self) -> None:
        tick = time.monotonic()
        for run in list(self._runs.values()):
            if run.kill_at is not None and tick >= run.kill_at:
                run.kill_at = None
                for c in run.live():
                    c.proc.signal_group(9)
            if run.terminating or run.phase in ("Succeeded", "Failed"):
                continue
            for c in run.init + run.main:
                if c.restart_at is not None and tick >= c.restart_at:
                    c.restart_at = None
                    c.restart_count += 1
                    self._start_container(run, c)
                    self._post(run)

    # -- pods ----------------------------------------------------------------------------------
    def _lookup(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            if kind == "configmap":
                cm = self._core.read_namespaced_config_map(name, ns)
                return {**(cm.data or {}), **{k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()}}
            secret = self._core.api_client.sanitize_for_serialization(self._core.read_namespaced_secret(name, ns))
            return decode_secret(secret)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def _on_pod(self, etype: str, pod: Obj) -> None:
        uid, meta = pod["metadata"]["uid"], pod["metadata"]
        run = self._runs.get(uid)
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if etype == "DELETED":
            if run is not None:
                run.gone = True
                self._terminate(run, grace=2)
            return
        if run is not None:
            run.pod = pod
        if meta.get("deletionTimestamp"):
            if run is not None and not run.terminating:
                grace = meta.get("deletionGracePeriodSeconds")
                self._terminate(run, grace=30 if grace is None else grace)
            elif run is None:
                self._delete_now(pod)
            return
        if run is None and phase == "Pending":
            self._admit(pod)
        elif run is None and phase == "Running":
            # Bound here and running, but not by this agent (an earlier agent on the same node).
            self._patch_status(pod, {"phase": "Failed", "reason": "NodeLost", "message": f"{self.name} restarted"})
        elif run is not None:
            self._sync_hosts()

    def _admit(self, pod: Obj) -> None:
        meta = pod["metadata"]
        pod_dir = self.workdir / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
        run = PodRun(pod=pod, ip=self._free_ips.pop(0), dir=pod_dir)
        self._runs[meta["uid"]] = run
        (pod_dir / "logs").mkdir(parents=True, exist_ok=True)
        pod["status"] = {**(pod.get("status") or {}), "podIP": run.ip, "hostIP": "127.0.0.1"}
        run.init = [ContainerRun(spec=c, init=True) for c in pod["spec"].get("initContainers") or []]
        run.main = [ContainerRun(spec=c, init=False) for c in pod["spec"]["containers"]]
        try:
            run.volumes = materialise_volumes(pod, pod_dir, self._lookup)
        except PodSpecError as e:
            self._fail_pod(run, e.reason, str(e))
            return
        except Exception:  # the API server away (a restart): forget the pod, admit it again in 1 s
            del self._runs[meta["uid"]]
            self._free_ips.insert(0, run.ip)
            threading.Timer(1.0, self._events.put, args=(("pod", "SYNC", pod),)).start()
            raise
        self._sync_hosts()
        first = run.init[0] if run.init else None
        if first is not None:
            self._start_container(run, first)
        else:
            for c in run.main:
                self._start_container(run, c)
        self._post(run)

    def _start_container(self, run: PodRun, c: ContainerRun) -> None:
        pod = run.pod
        pod.setdefault("status", {}).update({"podIP": run.ip, "podIPs": [{"ip": run.ip}], "hostIP": "127.0.0.1"})
        hostname = pod["spec"].get("hostname") or pod["metadata"]["name"]
        base = {**default_base_env(run.dir, hostname), **self.extra_env}
        c.terminated = None if c.restart_count == 0 else c.terminated
        try:
            c.launch = prepare_container(pod, c.spec, run.dir, run.volumes, self._lookup, base)
            subdomain = pod["spec"].get("subdomain")
            if subdomain and "PET_MASTER_PORT" in c.launch.env:
                gang = (pod["metadata"]["namespace"], subdomain)
                if gang not in self._gang_ports:
                    self._gang_ports[gang] = str(procs.free_port())
                c.launch.env["PET_MASTER_PORT"] = self._gang_ports[gang]
        except Exception as e:  # a PodSpecError says why; anything else is a bug here, reported on the pod
            log.warning("%s/%s cannot start: %s", run.key, c.spec["name"], e, exc_info=not isinstance(e, PodSpecError))
            c.terminated = {
                "exitCode": 128,
                "reason": e.reason if isinstance(e, PodSpecError) else "CreateContainerConfigError",
                "message": str(e),
                "startedAt": now(),
                "finishedAt": now(),
            }
            self._after_container(run, c)
            return
        c.launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        c.started_at = now()
        try:
            c.proc = procs.spawn(
                f"{run.key}/{c.spec['name']}",
                c.launch.argv,
                log_path=c.launch.log_path,
                env=c.launch.env,
                cwd=c.launch.cwd,
            )
        except OSError as e:  # not executable, bad interpreter, ...: what a runtime calls StartError
            c.proc = None
            c.terminated = {
                "exitCode": 128,
                "reason": "StartError",
                "message": str(e),
                "startedAt": c.started_at,
                "finishedAt": now(),
            }
            self._after_container(run, c)
            return
        uid, proc = pod["metadata"]["uid"], c.proc

        def wait_exit() -> None:
            proc.popen.wait()
            self._events.put(("exit", uid, c))

        threading.Thread(target=wait_exit, daemon=True).start()
        if run.phase == "Pending" and not c.init:
            run.phase = "Running"

    def _on_exit(self, run: PodRun, c: ContainerRun) -> None:
        assert c.proc is not None and c.launch is not None
        rc = c.proc.popen.returncode
        code, signal_no = (rc, None) if rc >= 0 else (128 - rc, -rc)
        message = c.launch.termination_path.read_bytes()[:4096].decode(errors="replace")
        if not message and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = c.launch.log_path.read_bytes()[-2048:].decode(errors="replace").splitlines()
            message = "\n".join(lines[-80:])
        c.terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.started_at,
            "finishedAt": now(),
            "containerID": f"process://{c.proc.pid}",
        }
        if signal_no is not None:
            c.terminated["signal"] = signal_no
        if message:
            c.terminated["message"] = message
        procs._registry.discard(c.proc)
        self._after_container(run, c)

    def _after_container(self, run: PodRun, c: ContainerRun) -> None:
        code = (c.terminated or {}).get("exitCode", 1)
        if run.terminating:
            if not run.live():
                self._finish_deletion(run)
            return
        policy = run.pod["spec"].get("restartPolicy", "Always")
        restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        if c.init:
            if code != 0 and not restart:
                run.phase, run.reason = "Failed", "InitContainerFailed"
            elif code != 0:
                c.restart_at = time.monotonic() + min(10.0, 2.0**c.restart_count)
            else:
                nxt = run.init.index(c) + 1
                for n in run.init[nxt : nxt + 1] or run.main:
                    self._start_container(run, n)
        elif restart:
            c.restart_at = time.monotonic() + min(10.0, 2.0**c.restart_count)
        elif all(
            m.terminated is not None and m.restart_at is None and not (m.proc and m.proc.alive()) for m in run.main
        ):
            failed = any(m.terminated and m.terminated["exitCode"] != 0 for m in run.main)
            run.phase = "Failed" if failed else "Succeeded"
        self._post(run)
        if run.phase in ("Succeeded", "Failed"):
            self._release(run)

    # -- deletion ------------------------------------------------------------------------------
    def _terminate(self, run: PodRun, grace: float) -> None:
        run.terminating = True
        live = run.live()
        if not live:
            self._finish_deletion(run)
            return
        for c in live:
            c.proc.signal_group(15)
        run.kill_at = time.monotonic() + max(0.0, float(grace))

    def _finish_deletion(self, run: PodRun) -> None:
        if run.phase not in ("Succeeded", "Failed"):
            failed = any((c.terminated or {}).get("exitCode", 0) != 0 for c in run.main) or any(
                c.terminated is None for c in run.main
            )
            run.phase = "Failed" if failed else "Succeeded"
            if not run.gone:
                self._post(run)
        if not run.gone:
            self._delete_now(run.pod)
        self._release(run)
        self._runs.pop(run.pod["metadata"]["uid"], None)

    def _delete_now(self, pod: Obj) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = pod["metadata"]
        try:
            self._core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _release(self, run: PodRun) -> None:
        if not run.released:
            run.released = True
            self._free_ips.append(run.ip)
        self._sync_hosts()

    # -- status --------------------------------------------------------------------------------
    def _fail_pod(self, run: PodRun, reason: str, message: str) -> None:
        run.phase, run.reason, run.message = "Failed", reason, message
        self._post(run)
        self._release(run)

    def _post(self, run: PodRun) -> None:
        try:
            self._patch_status(run.pod, pod_status(run))
        except Exception:  # the API server away (a restart): post again in 1 s, as a kubelet's sync loop would
            threading.Timer(1.0, self._events.put, args=(("post", run.pod["metadata"]["uid"]),)).start()
            raise

    def _patch_status(self, pod: Obj, status: Obj) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = pod["metadata"]
        current = self._core.read_namespaced_pod_status(meta["name"], meta["namespace"])
        if current.metadata.uid != meta["uid"]:
            return
        # A merge patch replaces lists: keep the conditions this agent does not own (PodScheduled, ...).
        mine = {c["type"] for c in status.get("conditions", [])}
        old = self._core.api_client.sanitize_for_serialization(current.status).get("conditions") or []
        if "conditions" in status:
            kept = {c["type"]: c for c in old}
            for c in status["conditions"]:
                prev = kept.get(c["type"])
                if prev is not None and prev.get("status") == c["status"]:
                    c["lastTransitionTime"] = prev.get("lastTransitionTime", c["lastTransitionTime"])
            status["conditions"] = [c for c in old if c["type"] not in mine] + status["conditions"]
        try:
            self._core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}, _content_type=MERGE
            )
        except ApiException as e:
            if e.status != 404:
                raise

    # -- DNS -----------------------------------------------------------------------------------
    def _sync_hosts(self) -> None:
        entries = []
        for run in self._runs.values():
            if run.phase in ("Succeeded", "Failed") or run.terminating:
                continue
            meta, spec = run.pod["metadata"], run.pod["spec"]
            sub, ns = spec.get("subdomain"), meta["namespace"]
            svc = self._services.get((ns, sub or ""))
            if not sub or svc is None or (svc.get("spec") or {}).get("clusterIP") != "None":
                continue
            selector = (svc["spec"].get("selector")) or {}
            labels = meta.get("labels") or {}
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                continue
            host = spec.get("hostname") or meta["name"]
            fqdn = f"{host}.{sub}.{ns}.svc.cluster.local"
            entries.append((run.ip, [f"{host}.{sub}", f"{host}.{sub}.{ns}", f"{host}.{sub}.{ns}.svc", fqdn]))
        if self._hosts.writable():
            self._hosts.set(entries)
        elif entries:
            log.warning("%s is not writable: pod DNS names will not resolve", self._hosts.path)


def main() -> None:  # pragma: no cover - manual use: python -m testbed.processnode KUBECONFIG WORKDIR
    import sys

    from kubernetes import config

    logging.basicConfig(level=logging.INFO)
    kubeconfig, workdir = sys.argv[1], Path(sys.argv[2])

    def factory() -> Any:
        return config.new_client_from_config(config_file=kubeconfig)

    node = ProcessNode(factory, workdir)
    node.start()
    print(f"{node.name} running; pods under {workdir}/pods; Ctrl-C stops", file=sys.stderr)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        node.stop()


if __name__ == "__main__":
    main()
