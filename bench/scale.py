"""Scale on the testbed control plane: one very large gang, and many concurrent 8-node jobs.

Every measurement gets a fresh control plane (etcd, kube-apiserver, controller manager, scheduler,
kwok) with `--nodes` fake GPU nodes, and, where the operator is measured, a fresh
`forgeline operator` subprocess, so no run inherits another's objects, caches or memory:

(a) the gang: one PretrainJob of `--gang` nodes (pods), against its floor, the same children
    the operator renders (the Indexed batch Job, and the PodGroup where the cluster serves gang
    scheduling) created directly with the client, on a cluster with no operator. Time from the
    create call to all pods created and to all Running, and their ratio; for the operator also
    the job's status Running, its CPU seconds, its peak RSS and its API requests.
(b) N concurrent 8-node jobs for each N of `--jobs`: all N PretrainJobs created at once
    (`--clients` threads), then the time to all 8N pods Running and to every job's status saying
    Running (the status lag, overall and per job), the operator's CPU seconds, RSS and API
    requests per job (its own counter forgeline_operator_api_requests_total), its reconcile
    backlog (forgeline_operator_queue_depth) every second, and the control plane's CPU seconds.
    N grows only while the next run is predicted (from the curve so far) to finish within
    `--cap-minutes`; a run that reaches the cap stops the series.
    Then the hot-loop check, with every job Running and nothing changing: the requests and passes
    over a short window, then over one resync period (`--resync-seconds`, passed to the
    operator). A quiet cluster should cost about one pass per job per period and nothing else.

kwok plays the pods ("hang": Running until deleted) and they ask for no GPUs, so node capacity is
counted in pods (`--max-pods` per node, raised as needed); this measures the control path.
It prints tables with per-job figures at each N (flat per-job figures: total work O(N)) and
writes every series as JSON to `--out`.

    PYTHONSAFEPATH=1 FORGELINE_TESTBIN_DIR=$(tests/cluster/kube/build.sh) \\
        .venv/bin/python bench/scale.py [--gang 1024] [--jobs 100 300 1000] [--nodes 128] \\
        [--resync-seconds 30] [--cap-minutes 30] [--out scale.json]      (make bench-scale)

`--gang 0` or `--jobs` with no value skips that part; `--gang 64 --jobs 10 20` is a quick try.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import psutil  # noqa: E402
from kubernetes import client, watch  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from testbed import procs  # noqa: E402
from testbed.kube import OUTCOME_LABEL, apply_crds, new_namespace, wait_for  # noqa: E402
from testbed.launcher import Cluster, ClusterOptions, start_cluster  # noqa: E402
from testbed.operator import OperatorProcess, pretrain_manifest  # noqa: E402

from forgeline.api.validate import parse_job  # noqa: E402
from forgeline.operator.render import LABEL_JOB, Owner, RenderSettings, render_job, render_pod_group  # noqa: E402

GROUP, VERSION, PLURAL = "forgeline.io", "v1alpha1", "pretrainjobs"
PLACEMENT: dict[str, Any] = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
}
JOB_NODES = 8  # pods per job in part (b)
REQUESTS = "forgeline_operator_api_requests_total"
QUEUE_DEPTH = "forgeline_operator_queue_depth"
PASSES = "forgeline_operator_reconcile_total"
Obj = dict[str, Any]


def manifest(name: str, nodes: int) -> Obj:
    return pretrain_manifest(name, nodes=nodes, gpus=0, **PLACEMENT)


# -- watching many objects cheaply --------------------------------------------------------------
class Tally:
    """One list + watch of a namespace's pods or jobs, as raw JSON (the client's model classes
    would cost this process more CPU than the operator gets at 8,000 pods, on the same 2 cores).

    Counts what exists and what is `done` (a pod Running, a job whose status says Running), per
    object and per group (a job's pods), and records when `total` existed and were done first."""

    def __init__(
        self,
        api: client.ApiClient,
        kind: str,
        ns: str,
        *,
        total: int,
        selector: str = "",
        group_size: int = 1,
    ) -> None:
        self.kind, self.ns, self.total, self.selector, self.group_size = kind, ns, total, selector, group_size
        if kind == "pods":
            core = client.CoreV1Api(api)
            self._call: Callable[..., Any] = core.list_namespaced_pod
            self._args: tuple[Any, ...] = (ns,)
        else:
            self._call = client.CustomObjectsApi(api).list_namespaced_custom_object
            self._args = (GROUP, VERSION, ns, PLURAL)
        self.done_count = 0
        self.created_at: float | None = None
        self.done_at: float | None = None
        self.group_done_at: dict[str, float] = {}
        self._state: dict[str, bool] = {}
        self._group_count: Counter[str] = Counter()
        self._finished = threading.Event()
        self._listed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tally-{kind}", daemon=True)
        self._thread.start()
        if not self._listed.wait(60):  # so that the clock starts after the first listing
            raise TimeoutError(f"could not list {kind} in {ns} within 60 s")

    @property
    def seen(self) -> int:
        return len(self._state)

    def _done(self, obj: Obj) -> bool:
        if self.kind == "pods":
            return bool((obj.get("status") or {}).get("phase") == "Running")
        return bool((obj.get("status") or {}).get("state") == "Running")

    def _group(self, obj: Obj) -> str:
        meta = obj["metadata"]
        return str((meta.get("labels") or {}).get(LABEL_JOB, "")) if self.kind == "pods" else str(meta["name"])

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    resp = self._call(*self._args, label_selector=self.selector, _preload_content=False)
                    listing = json.loads(resp.data)
                    for obj in listing.get("items") or []:
                        self._observe("ADDED", obj)
                    rv = listing["metadata"]["resourceVersion"]
                    self._listed.set()
                stream = watch.Watch().stream(
                    self._call,
                    *self._args,
                    label_selector=self.selector,
                    resource_version=rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=30,
                    deserialize=False,
                )
                for event in stream:
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._observe(event["type"], obj)
                    if self._stop.is_set():
                        return
            except Exception as exc:  # an expired or broken watch: list again and carry on
                if not self._stop.is_set():
                    print(f"  (watch of {self.kind} in {self.ns}: {exc!r}; listing again)", file=sys.stderr)
                rv = None
                time.sleep(0.5)

    def _observe(self, kind: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        before = self._state.get(name, False)
        if kind == "DELETED":
            self._state.pop(name, None)
            now = False
        else:
            now = self._state[name] = self._done(obj)
        if now != before:
            group = self._group(obj)
            self.done_count += 1 if now else -1
            self._group_count[group] += 1 if now else -1
            if now and self._group_count[group] >= self.group_size:
                self.group_done_at.setdefault(group, time.perf_counter())
        if self.created_at is None and len(self._state) >= self.total:
            self.created_at = time.perf_counter()
        if self.done_at is None and self.done_count >= self.total:
            self.done_at = time.perf_counter()
            self._finished.set()

    def wait(self, deadline: float) -> bool:
        """Whether all `total` were done before `deadline` (time.perf_counter)."""
        return self._finished.wait(max(0.0, deadline - time.perf_counter()))

    def stop(self) -> None:
        self._stop.set()


# -- the operator, from the outside -------------------------------------------------------------
def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text -> sample name -> [(labels, value)]."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


@dataclass
class Snapshot:
    """Cumulative counters at one moment; `minus` gives what a stretch of time cost."""

    t: float
    op_cpu: float = 0.0
    requests: dict[str, float] = field(default_factory=dict)  # "verb resource" -> count
    passes: float = 0.0
    plane_cpu: dict[str, float] = field(default_factory=dict)  # control-plane component -> CPU-s
    bench_cpu: float = 0.0

    def minus(self, old: Snapshot) -> dict[str, Any]:
        keys = set(self.requests) | set(old.requests)
        by = {k: self.requests.get(k, 0.0) - old.requests.get(k, 0.0) for k in sorted(keys)}
        return {
            "seconds": self.t - old.t,
            "operator_cpu_s": self.op_cpu - old.op_cpu,
            "requests": sum(by.values()),
            "requests_by": {k: v for k, v in by.items() if v},
            "passes": self.passes - old.passes,
            "plane_cpu_s": {k: self.plane_cpu[k] - old.plane_cpu.get(k, 0.0) for k in self.plane_cpu},
            "bench_cpu_s": self.bench_cpu - old.bench_cpu,
        }


def cpu_seconds(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)
    except psutil.Error:
        return 0.0


class Probe:
    """Reads the operator (when there is one) and the control plane: CPU from /proc, RSS, and the
    operator's /metrics. Warns once if the operator lacks a metric this bench reads."""

    def __init__(self, cluster: Cluster, operator: OperatorProcess | None) -> None:
        self.cluster, self.operator = cluster, operator
        self.missing: set[str] = set()

    @property
    def pid(self) -> int | None:
        return self.operator.proc.pid if self.operator and self.operator.proc else None

    def metrics(self, tries: int = 1) -> dict[str, list[tuple[dict[str, str], float]]]:
        if self.operator is None:
            return {}
        for attempt in range(tries):
            try:
                text = self.operator.metrics()
                break
            except OSError:  # a scrape that timed out under load
                if attempt == tries - 1:
                    raise
                time.sleep(1)
        samples = parse_metrics(text)
        for name in (REQUESTS, QUEUE_DEPTH):
            if name not in samples and name not in self.missing:
                self.missing.add(name)
                print(f"  (the operator does not export {name}: those figures are left out)", file=sys.stderr)
        return samples

    def snapshot(self) -> Snapshot:
        snap = Snapshot(time.perf_counter())
        snap.plane_cpu = {p.name: cpu_seconds(p.pid) for p in self.cluster.procs}
        snap.bench_cpu = cpu_seconds(os.getpid())
        if self.pid is not None:
            snap.op_cpu = cpu_seconds(self.pid)
            samples = self.metrics(tries=5)
            for labels, value in samples.get(REQUESTS, []):
                snap.requests[f"{labels.get('verb', '?')} {labels.get('resource', '?')}"] = value
            snap.passes = sum(v for _, v in samples.get(PASSES, []))
        return snap

    def rss_mib(self) -> float:
        try:
            return float(psutil.Process(self.pid).memory_info().rss) / 2**20 if self.pid else 0.0
        except psutil.Error:
            return 0.0

    def peak_rss_mib(self) -> float:
        """The kernel's high-water mark of the operator's RSS (VmHWM): its peak since it started."""
        if self.pid is None:
            return 0.0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


class Sampler:
    """Every `interval` s: the operator's backlog, requests, passes, CPU and RSS, and the tallies'
    counts, as rows {t: seconds since t0, ...}."""

    def __init__(self, probe: Probe, tallies: dict[str, Tally], interval: float = 1.0) -> None:
        self.probe, self.tallies, self.interval = probe, tallies, interval
        self.rows: list[Obj] = []
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval - (time.perf_counter() - self.t0) % self.interval):
            row: Obj = {"t": round(time.perf_counter() - self.t0, 2)}
            for name, tally in self.tallies.items():
                row[f"{name}_seen"], row[f"{name}_done"] = tally.seen, tally.done_count
            if self.probe.pid is not None:
                row["cpu_s"] = round(cpu_seconds(self.probe.pid), 2)
                row["rss_mib"] = round(self.probe.rss_mib(), 1)
                try:
                    samples = self.probe.metrics()
                except OSError:  # a scrape that timed out under load: a gap in the series
                    samples = {}
                depth = samples.get(QUEUE_DEPTH)
                row["queue_depth"] = sum(v for _, v in depth) if depth else None
                row["requests"] = sum(v for _, v in samples.get(REQUESTS, [])) if REQUESTS in samples else None
                row["passes"] = sum(v for _, v in samples.get(PASSES, []))
            self.rows.append(row)

    def stop(self) -> list[Obj]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.rows


# -- a fresh cluster (and operator) per measurement ---------------------------------------------
@dataclass
class Bed:
    cluster: Cluster
    api: client.ApiClient
    core: client.CoreV1Api
    batch: client.BatchV1Api
    custom: client.CustomObjectsApi
    ns: str
    probe: Probe
    operator: OperatorProcess | None


def start_operator(cluster: Cluster, args: argparse.Namespace, workdir: Path) -> OperatorProcess:
    flags = [
        "--trainer-metrics-port=0", "--store=file:///tmp/forgeline-bench-store",
        f"--resync-seconds={args.resync_seconds}", f"--workers={args.workers}",
    ]  # fmt: skip
    operator = OperatorProcess(flags, cluster.env(), workdir)
    for attempt in range(3):  # another engineer's edit in progress can break a start: wait, retry
        try:
            operator.start()
            return operator
        except procs.StartError as exc:
            operator.stop()
            if attempt == 2:
                raise
            print(f"  operator did not start ({str(exc)[-300:]}); retrying in 60 s", file=sys.stderr)
            time.sleep(60)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def testbed(args: argparse.Namespace, tag: str, *, operator: bool) -> Iterator[Bed]:
    workdir = Path(args.workdir) / tag
    pods_needed = max(args.gang, JOB_NODES * max(args.jobs, default=0)) + JOB_NODES  # + the warm-up
    max_pods = max(args.max_pods, math.ceil(pods_needed * 1.1 / args.nodes))
    opts = ClusterOptions(gpu_nodes=args.nodes, max_pods=max_pods, process_node=False, workdir=workdir / "cluster")
    t0 = time.perf_counter()
    with start_cluster(opts) as cluster:
        apply_crds(cluster, REPO / "crds")
        api = cluster.api_client()
        core = client.CoreV1Api(api)
        op = start_operator(cluster, args, workdir) if operator else None
        try:
            bed = Bed(
                cluster, api, core, client.BatchV1Api(api), client.CustomObjectsApi(api), "", Probe(cluster, op), op
            )
            warm_up(bed)
            bed.ns = new_namespace(core, "scale")
            took = time.perf_counter() - t0
            print(
                f"  [{tag}] cluster of {args.nodes} nodes x {max_pods} pods ready in {took:.0f}s ({cluster.describe()})"
            )
            yield bed
        finally:
            if op is not None:
                op.stop()


def floor_objects(bed: Bed, name: str, nodes: int) -> list[Obj]:
    """The children the operator renders for an attempt that run pods: the PodGroup (with gang
    scheduling) and the Indexed Job, without an owner (the garbage collector would delete them)."""
    body = {**manifest(name, nodes), "metadata": {"name": name, "namespace": bed.ns, "labels": {OUTCOME_LABEL: "hang"}}}
    job = parse_job(body)
    owner = Owner("direct", labels={OUTCOME_LABEL: "hang"})
    settings = RenderSettings(gang_scheduling=bed.cluster.gang_scheduling)
    objs = [render_pod_group(job, owner, 1)] if settings.gang_scheduling else []
    objs.append(render_job(job, owner, 1, settings))
    for obj in objs:
        obj["metadata"].pop("ownerReferences", None)
    return objs


def create_floor(bed: Bed, objs: list[Obj]) -> None:
    for obj in objs:
        if obj["kind"] == "PodGroup":
            group, version = obj["apiVersion"].split("/")
            bed.custom.create_namespaced_custom_object(group, version, bed.ns, "podgroups", obj)
        else:
            bed.batch.create_namespaced_job(bed.ns, obj)  # type: ignore[arg-type]  # the client takes dicts


def warm_up(bed: Bed) -> None:
    """One 1-node job, through the same path, in a namespace of its own, then deleted: the first
    job pays for discovery, watches and caches starting, which no later one does."""
    bed.ns = new_namespace(bed.core, "warmup")
    pods = Tally(bed.api, "pods", bed.ns, total=1, selector=f"{LABEL_JOB}=warmup")
    if bed.operator is not None:
        bed.custom.create_namespaced_custom_object(GROUP, VERSION, bed.ns, PLURAL, manifest("warmup", 1))
        jobs = Tally(bed.api, "jobs", bed.ns, total=1)
        ok = pods.wait(time.perf_counter() + 120) and jobs.wait(time.perf_counter() + 60)
        jobs.stop()
        bed.custom.delete_namespaced_custom_object(GROUP, VERSION, bed.ns, PLURAL, "warmup")
    else:
        create_floor(bed, floor_objects(bed, "warmup", 1))
        ok = pods.wait(time.perf_counter() + 120)
        bed.batch.delete_collection_namespaced_job(bed.ns, propagation_policy="Background")
    pods.stop()
    if not ok:
        raise AssertionError(f"the warm-up job did not reach Running; operator log:\n{_log(bed)}")
    wait_for(lambda: not bed.core.list_namespaced_pod(bed.ns).items, timeout=120, what="warm-up pods gone")


def _log(bed: Bed) -> str:
    return bed.operator.log(40) if bed.operator is not None else "(no operator)"


# -- (a) one large gang -------------------------------------------------------------------------
def gang_once(args: argparse.Namespace, path: str) -> Obj:
    n = args.gang
    with testbed(args, f"gang-{path}", operator=path == "operator") as bed:
        pods = Tally(bed.api, "pods", bed.ns, total=n, selector=f"{LABEL_JOB}=gang")
        jobs = Tally(bed.api, "jobs", bed.ns, total=1) if bed.operator else None
        sampler = Sampler(bed.probe, {"pods": pods, **({"jobs": jobs} if jobs else {})})
        before = bed.probe.snapshot()
        t0 = time.perf_counter()
        if bed.operator is not None:
            bed.custom.create_namespaced_custom_object(GROUP, VERSION, bed.ns, PLURAL, manifest("gang", n))
        else:
            create_floor(bed, floor_objects(bed, "gang", n))
        deadline = t0 + args.cap_minutes * 60
        ok = pods.wait(deadline) and (jobs is None or jobs.wait(deadline))
        after = bed.probe.snapshot()
        rows = sampler.stop()
        pods.stop()
        if jobs:
            jobs.stop()
        if not ok:
            raise AssertionError(
                f"gang of {n} via {path}: {pods.seen} pods, {pods.done_count} Running after {args.cap_minutes} min; "
                f"operator log:\n{_log(bed)}"
            )
        assert pods.created_at is not None and pods.done_at is not None
        result: Obj = {
            "path": path,
            "pods": n,
            "created_s": pods.created_at - t0,
            "running_s": pods.done_at - t0,
            "status_running_s": (jobs.done_at - t0) if jobs and jobs.done_at else None,
            "cost": after.minus(before),
            "series": rows,
        }
        if bed.operator is not None:
            result["rss_peak_mib"] = bed.probe.peak_rss_mib()
            result["rss_end_mib"] = bed.probe.rss_mib()
        return result


# -- (b) many concurrent jobs -------------------------------------------------------------------
def jobs_once(args: argparse.Namespace, n: int, deadline: float) -> Obj:
    with testbed(args, f"jobs-{n}", operator=True) as bed:
        names = [f"j{i:04d}" for i in range(n)]
        pods = Tally(bed.api, "pods", bed.ns, total=n * JOB_NODES, selector=LABEL_JOB, group_size=JOB_NODES)
        jobs = Tally(bed.api, "jobs", bed.ns, total=n)
        sampler = Sampler(bed.probe, {"pods": pods, "jobs": jobs})
        before = bed.probe.snapshot()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(
                pool.map(
                    lambda name: bed.custom.create_namespaced_custom_object(
                        GROUP, VERSION, bed.ns, PLURAL, manifest(name, JOB_NODES)
                    ),
                    names,
                )
            )
        applied = time.perf_counter() - t0
        ok = pods.wait(deadline) and jobs.wait(deadline)
        up = bed.probe.snapshot()
        result: Obj = {
            "jobs": n,
            "pods": n * JOB_NODES,
            "apply_s": applied,
            "timed_out": not ok,
            "pods_seen": pods.seen,
            "pods_running": pods.done_count,
            "jobs_running": jobs.done_count,
            "to_running": up.minus(before),
            "rss_end_mib": bed.probe.rss_mib(),
        }
        if ok:
            assert pods.created_at and pods.done_at and jobs.done_at
            lags = [jobs.group_done_at[j] - pods.group_done_at[j] for j in names]
            result |= {
                "pods_created_s": pods.created_at - t0,
                "pods_running_s": pods.done_at - t0,
                "status_running_s": jobs.done_at - t0,
                "status_lag_s": jobs.done_at - pods.done_at,
                "job_lag_s": {
                    "median": statistics.median(lags),
                    "p95": sorted(lags)[int(0.95 * (len(lags) - 1))],
                    "max": max(lags),
                },
                "quiet": quiet_windows(args, bed),
            }
        result["rss_peak_mib"] = bed.probe.peak_rss_mib()
        result["series"] = sampler.stop()
        pods.stop()
        jobs.stop()
        return result


def quiet_windows(args: argparse.Namespace, bed: Bed) -> Obj:
    """With every job Running and nothing changing: what a short window and one resync period
    cost. Nothing happens between events, so the short window should see only the passes that
    fall due in it; a resync period should cost about one pass per job."""
    time.sleep(args.settle)
    a = bed.probe.snapshot()
    time.sleep(args.window)
    b = bed.probe.snapshot()
    time.sleep(args.resync_seconds)
    c = bed.probe.snapshot()
    return {"window": b.minus(a), "period": c.minus(b)}


def predict_minutes(done: list[Obj], n: int, args: argparse.Namespace) -> float:
    """The next run's length, extrapolated from the last two (a power law in N) or the last one."""
    last = done[-1]
    t_last = last["status_running_s"]
    exponent = 1.0
    if len(done) >= 2:
        prev = done[-2]
        exponent = max(1.0, math.log(t_last / prev["status_running_s"]) / math.log(last["jobs"] / prev["jobs"]))
    overhead = 90 + args.settle + args.window + args.resync_seconds  # cluster start, warm-up, quiet windows
    return (t_last * (n / last["jobs"]) ** exponent + overhead) / 60


# -- reporting ----------------------------------------------------------------------------------
def compact(rows: list[Obj], key: str, points: int = 30) -> str:
    values = [(r["t"], float(r[key])) for r in rows if r.get(key) is not None]
    if not values:
        return "(not exported)"
    step = max(1, math.ceil(len(values) / points))
    top = max(v for _, v in values)
    return " ".join(f"{v:g}" for _, v in values[::step]) + f"   (every {step} s; max {top:g})"


def print_gang(direct: Obj, ours: Obj) -> None:
    n = direct["pods"]
    print(f"\n(a) one gang of {n} pods          direct   operator   ratio")
    for label, key in (("all pods created (s)", "created_s"), ("all pods Running (s)", "running_s")):
        print(f"    {label:<27}{direct[key]:>7.1f}{ours[key]:>11.1f}{ours[key] / direct[key]:>8.2f}")
    cost = ours["cost"]
    print(f"    {'status Running (s)':<27}{'':>7}{ours['status_running_s']:>11.1f}")
    print(f"    {'operator CPU-s':<27}{'':>7}{cost['operator_cpu_s']:>11.1f}")
    print(f"    {'operator RSS peak (MiB)':<27}{'':>7}{ours['rss_peak_mib']:>11.0f}")
    print(f"    {'operator API requests':<27}{'':>7}{cost['requests']:>11.0f}   {fmt_by(cost['requests_by'])}")
    print(f"    {'operator passes':<27}{'':>7}{cost['passes']:>11.0f}")
    for path, run in (("direct", direct), ("operator", ours)):
        plane = ", ".join(f"{k} {v:.0f}" for k, v in run["cost"]["plane_cpu_s"].items())
        print(f"    control plane CPU-s ({path}): {plane}")


def fmt_by(by: dict[str, float], per: float = 1.0) -> str:
    return ", ".join(f"{k} {v / per:.3g}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))


def print_jobs(runs: list[Obj], args: argparse.Namespace) -> None:
    done = [r for r in runs if "status_running_s" in r]
    print(f"\n(b) N concurrent {JOB_NODES}-node jobs (operator: --workers {args.workers})")
    print(
        f"{'N':>6} {'pods':>6} {'apply s':>8} {'pods Run s':>10} {'status s':>9} {'lag s':>6} "
        f"{'job lag p50/p95/max s':>22} {'CPU-s':>7} {'RSS MiB':>8} {'peak':>6} {'req/job':>8} {'pass/job':>8} "
        f"{'max queue':>9}"
    )
    for r in done:
        cost, lag = r["to_running"], r["job_lag_s"]
        depths = [row["queue_depth"] for row in r["series"] if row.get("queue_depth") is not None]
        lags = f"{lag['median']:.1f}/{lag['p95']:.1f}/{lag['max']:.1f}"
        print(
            f"{r['jobs']:>6} {r['pods']:>6} {r['apply_s']:>8.1f} {r['pods_running_s']:>10.1f} "
            f"{r['status_running_s']:>9.1f} {r['status_lag_s']:>6.1f} {lags:>22} "
            f"{cost['operator_cpu_s']:>7.1f} {r['rss_end_mib']:>8.0f} {r['rss_peak_mib']:>6.0f} "
            f"{cost['requests'] / r['jobs']:>8.1f} {cost['passes'] / r['jobs']:>8.1f} "
            f"{(max(depths) if depths else float('nan')):>9g}"
        )
    for r in runs:
        if r.get("error"):
            print(f"{r['jobs']:>6}: failed: {r['error'][:300]}")
        elif r.get("timed_out"):
            print(f"{r['jobs']:>6}: not all Running within the cap: {r['pods_running']}/{r['pods']} pods, "
                  f"{r['jobs_running']}/{r['jobs']} jobs")  # fmt: skip
        elif r.get("skipped"):
            print(f"{r['jobs']:>6}: skipped: {r['skipped']}")
    if not done:
        return
    base = done[0]

    def per_job(r: Obj) -> dict[str, float]:
        c = r["to_running"]
        return {
            "s": r["status_running_s"] / r["jobs"],
            "CPU-s": c["operator_cpu_s"] / r["jobs"],
            "requests": c["requests"] / r["jobs"],
            "passes": c["passes"] / r["jobs"],
        }

    print(f"    per job, and against N={base['jobs']} (flat x1.0: the total grows as O(N)):")
    for r in done:
        mine, ref = per_job(r), per_job(base)
        print(
            f"{r['jobs']:>6}  "
            + "  ".join(f"{k} {v:.3g} (x{v / ref[k]:.2f})" if ref[k] else f"{k} {v:.3g}" for k, v in mine.items())
        )
    for r in done:
        if r["to_running"]["requests_by"]:
            print(f"{r['jobs']:>6}  requests/job by verb+resource: {fmt_by(r['to_running']['requests_by'], r['jobs'])}")
    print(f"    quiet, all Running: a {args.window:g} s window, then one resync period ({args.resync_seconds:g} s)")
    for r in done:
        w, p = r["quiet"]["window"], r["quiet"]["period"]
        print(
            f"{r['jobs']:>6}  window: {w['requests']:.0f} requests, {w['passes']:.0f} passes, "
            f"{w['operator_cpu_s']:.1f} CPU-s | period: {p['requests']:.0f} requests "
            f"({p['requests'] / r['jobs']:.2f}/job), {p['passes']:.0f} passes ({p['passes'] / r['jobs']:.2f}/job), "
            f"{p['operator_cpu_s']:.1f} CPU-s"
        )
    for r in done:
        print(f"{r['jobs']:>6}  queue depth: {compact(r['series'], 'queue_depth')}")
        print(f"{r['jobs']:>6}  pods Running: {compact(r['series'], 'pods_done')}")


def operator_code() -> Obj:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"head": git("rev-parse", "--short", "HEAD"), "diff_stat": git("diff", "--stat", "--", "operator/")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gang", type=int, default=1024, help="pods in the one large gang (0: skip part a)")
    parser.add_argument("--jobs", type=int, nargs="*", default=[100, 300, 1000], help="N concurrent 8-node jobs")
    parser.add_argument("--nodes", type=int, default=128, help="kwok GPU nodes (8 GPUs each)")
    parser.add_argument("--max-pods", type=int, default=110, help="pods per node (raised to fit the largest run)")
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="the operator's resync period")
    parser.add_argument("--workers", type=int, default=4, help="the operator's --workers")
    parser.add_argument("--clients", type=int, default=8, help="threads creating the N jobs")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after all Running before the quiet windows")
    parser.add_argument("--window", type=float, default=5.0, help="the short quiet window (s)")
    parser.add_argument("--cap-minutes", type=float, default=30.0, help="the most one run may take")
    parser.add_argument(
        "--budget-minutes", type=float, default=None, help="skip a run of (b) predicted to end after this, in all"
    )
    parser.add_argument("--out", type=Path, default=None, help="write every figure and series here as JSON")
    parser.add_argument("--workdir", type=Path, default=None, help="logs of each cluster and operator (default: temp)")
    args = parser.parse_args(argv)
    for name in ("gang", "nodes", "max_pods", "workers", "clients"):
        if getattr(args, name) < (0 if name == "gang" else 1):
            parser.error(f"--{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    if args.gang > 1024:
        parser.error(f"--gang: a PretrainJob has at most 1024 nodes (spec.resources.nodes), got {args.gang}")
    if any(n < 1 for n in args.jobs):
        parser.error(f"--jobs: each N must be at least 1, got {args.jobs}")
    if not 0 < args.window < args.resync_seconds:
        parser.error(f"--window: must be shorter than --resync-seconds ({args.resync_seconds:g}), got {args.window:g}")
    args.jobs = sorted(set(args.jobs))
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="forgeline-scale-"))
    began = time.perf_counter()
    budget_end = began + args.budget_minutes * 60 if args.budget_minutes else math.inf
    report: Obj = {"args": {k: str(v) for k, v in vars(args).items()}, "operator_code": operator_code()}
    report["loadavg_start"] = os.getloadavg()
    print(f"logs under {args.workdir}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    code = report["operator_code"]
    print(f"operator code: {code['head']} + working tree: {(code['diff_stat'].splitlines() or ['clean'])[-1].strip()}")

    def save() -> None:
        if args.out:
            report["loadavg_end"] = os.getloadavg()
            args.out.write_text(json.dumps(report, indent=1))

    if args.gang:
        try:
            direct = gang_once(args, "direct")
            ours = gang_once(args, "operator")
            report["gang"] = {"direct": direct, "operator": ours}
            print_gang(direct, ours)
        except (AssertionError, TimeoutError, procs.StartError) as exc:  # part (b) still runs
            report["gang"] = {"error": str(exc)}
            print(f"(a) failed: {str(exc)[:2000]}", file=sys.stderr)
        save()

    runs: list[Obj] = report.setdefault("jobs", [])
    for n in args.jobs:
        done = [r for r in runs if "status_running_s" in r]
        left = min(args.cap_minutes, (budget_end - time.perf_counter()) / 60)
        if len(done) < len(runs):
            runs.append({"jobs": n, "skipped": "a smaller N did not finish (see above)"})
        elif done and (minutes := predict_minutes(done, n, args)) > left:
            why = "cap" if left == args.cap_minutes else "budget left"
            runs.append({"jobs": n, "skipped": f"predicted {minutes:.0f} min > the {left:.0f} min {why}"})
        elif left < 3:
            runs.append({"jobs": n, "skipped": f"{left:.1f} min of the budget left"})
        else:
            print(f"  N={n}: applying {n} jobs of {JOB_NODES} pods")
            try:
                runs.append(jobs_once(args, n, time.perf_counter() + left * 60))
            except (AssertionError, TimeoutError, procs.StartError) as exc:
                runs.append({"jobs": n, "error": str(exc)})
                print(f"  N={n} failed: {str(exc)[:2000]}", file=sys.stderr)
        save()
    if runs:
        print_jobs(runs, args)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    save()
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
